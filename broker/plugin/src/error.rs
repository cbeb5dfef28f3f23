//! Typed errors of the plugin host.

use std::fmt;
use std::time::Duration;

/// A hook (or the start of an instance), for error messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Instantiation plus `init`.
    Init,
    /// `authenticate`.
    Authenticate,
    /// `authorize`.
    Authorize,
    /// `on-publish`.
    OnPublish,
    /// `on-event`.
    OnEvent,
    /// `on-rule-output`.
    OnRuleOutput,
    /// `call-function`.
    CallFunction,
}

impl Hook {
    /// Every hook, in [`Hook::index`] order.
    pub const ALL: [Hook; 7] = [
        Hook::Init,
        Hook::Authenticate,
        Hook::Authorize,
        Hook::OnPublish,
        Hook::OnEvent,
        Hook::OnRuleOutput,
        Hook::CallFunction,
    ];

    /// Position in [`Hook::ALL`] (per-hook counters).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Init => "init",
            Hook::Authenticate => "authenticate",
            Hook::Authorize => "authorize",
            Hook::OnPublish => "on-publish",
            Hook::OnEvent => "on-event",
            Hook::OnRuleOutput => "on-rule-output",
            Hook::CallFunction => "call-function",
        })
    }
}

/// Why a plugin call, load or reload failed. Every variant names the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The plugin trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("plugin {plugin}: {hook} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// The trap and its wasm backtrace.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin {plugin}: {hook} exceeded its deadline of {deadline:?}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// The configured deadline.
        deadline: Duration,
    },
    /// The instance tried to grow its memory past the cap and trapped.
    #[error("plugin {plugin}: {hook} exceeded the memory limit of {limit_bytes} bytes")]
    OutOfMemory {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// The configured cap.
        limit_bytes: u64,
    },
    /// Every instance was busy for longer than the queue timeout.
    #[error("plugin {plugin}: {hook}: all {max_instances} instances busy")]
    Busy {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// The configured instance count.
        max_instances: usize,
    },
    /// The plugin answered something a client could not have sent: a
    /// topic or property breaking the MQTT rules, a `$`-topic without a
    /// grant, a payload above the broker's maximum packet size, a reason
    /// code the hook does not allow, an answer that does not fit the call.
    /// The answer is discarded and the failure policy applies, as for a trap.
    #[error("plugin {plugin}: {hook} answered invalid output: {problem}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// What was wrong.
        problem: String,
    },
    /// The plugin is suspended after repeated failures; it was not called.
    #[error("plugin {plugin}: {hook}: suspended after repeated failures")]
    Suspended {
        /// Plugin name.
        plugin: String,
        /// The hook not called.
        hook: Hook,
    },
    /// The plugin answered with an error of its own (`hook-error`,
    /// `function-error`); it did not fail.
    #[error("plugin {plugin}: {hook} returned an error: {message}")]
    Reported {
        /// Plugin name.
        plugin: String,
        /// The hook called.
        hook: Hook,
        /// The plugin's error, rendered.
        message: String,
    },
    /// The component could not be read, compiled, linked, instantiated or
    /// initialised (including `init` returning an error).
    #[error("plugin {plugin}: cannot load: {message}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// No plugin of that name is configured.
    #[error("no plugin named {0}")]
    UnknownPlugin(String),
    /// No plugin offers a rule function of that name.
    #[error("no plugin offers the function {0}")]
    UnknownFunction(String),
    /// The configuration is invalid (duplicate names, bad filters, ...).
    #[error("plugin configuration: {0}")]
    Config(String),
}

impl PluginError {
    /// The plugin concerned, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PluginError::Trap { plugin, .. }
            | PluginError::Timeout { plugin, .. }
            | PluginError::OutOfMemory { plugin, .. }
            | PluginError::Busy { plugin, .. }
            | PluginError::Suspended { plugin, .. }
            | PluginError::Invalid { plugin, .. }
            | PluginError::Reported { plugin, .. }
            | PluginError::Load { plugin, .. } => Some(plugin),
            PluginError::UnknownPlugin(p) => Some(p),
            PluginError::UnknownFunction(_) | PluginError::Config(_) => None,
        }
    }

    /// True for failures that count towards suspension (trap, timeout,
    /// out of memory, invalid output, failed instantiation).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::Invalid { .. }
                | PluginError::Load { .. }
        )
    }

    /// The hook concerned, if any.
    pub fn hook(&self) -> Option<Hook> {
        match self {
            PluginError::Trap { hook, .. }
            | PluginError::Timeout { hook, .. }
            | PluginError::OutOfMemory { hook, .. }
            | PluginError::Busy { hook, .. }
            | PluginError::Suspended { hook, .. }
            | PluginError::Invalid { hook, .. }
            | PluginError::Reported { hook, .. } => Some(*hook),
            PluginError::Load { .. } => Some(Hook::Init),
            _ => None,
        }
    }
}
