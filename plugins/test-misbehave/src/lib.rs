//! Test plugin for `midge-plugin`'s tests. Behaviour is chosen by the input:
//!
//! - on-publish topic `trap` panics (a trap), `loop` never returns, `oom`
//!   allocates until the memory cap stops it, `kv` exercises the kv
//!   capability and answers with the result as payload, `publish` publishes
//!   `echo/<payload>`, `clock` answers with the clock, `fs` tries files,
//!   directories, environment and network, `get/<key>` answers a kv value, `deny` denies with
//!   0x99, `drop` drops; anything else is passed on with the payload reversed.
//!   In an on-publish-batch call a message on `short-batch` gets no decision.
//! - authenticate: user `trap` / `loop` misbehave, `alice` with password
//!   `secret` is allowed (superuser when the client id is `root`), `carol`
//!   continues enhanced auth, anyone else is ignored; no user name is denied.
//! - authorize: topics under `allowed/` are allowed, `denied/` denied, else ignored.
//! - on-event counts events per kind in kv (`events/<kind>`).
//! - on-publish topics `bad/...` answer what no client could send (see
//!   [`bad`]): topics with wildcards, U+0000, empty or 70 KB, a `$SYS`
//!   rewrite, a wildcard Response Topic, invalid UTF-8 under the UTF-8
//!   payload-format indicator, a payload of the size the payload names
//!   (default 2 MiB), deny codes 0x00 / 0x10, bad properties, and the same
//!   through the publish capability. `grow` answers a valid payload of the
//!   size the payload names; `recurse` recurses until the stack runs out.
//! - on-rule-output stores the rows under `rule/<name>` in kv; for the rule
//!   `slow` it never returns (a slow, failing action).
//! - function `double(x)` returns 2x; `huge(n)` a JSON string of n bytes;
//!   `notjson()` text that is not JSON.
//! - authenticate: user `deny-0` / `deny-10` is denied with 0x00 / 0x10,
//!   `big-auth-data` allowed with 70 KB of auth data.
//! - config `{ "mode": "functions-only" }`: only the function, no hooks;
//!   `{ "mode": "rule-output-only" }`: only on-rule-output; `"fail-init"` /
//!   `"trap-init"` anywhere in the config: init refuses / panics;
//!   `{ "filters": ["open/#"] }`: on-publish only for those filters, the
//!   topic's first level left out when choosing the behaviour (`open/bad/dollar`
//!   behaves as `bad/dollar`), so several instances can share a broker.

use midge_sdk::*;

struct Misbehave {
    config: String,
    /// On-publish filters were configured: behaviour is chosen by the
    /// topic without its first level.
    prefixed: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {
    filters: Option<Vec<String>>,
}

impl Plugin for Misbehave {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        if config.contains("fail-init") {
            return Err(InitError::BadConfig("asked to fail".into()));
        }
        if config.contains("trap-init") {
            panic!("asked to trap in init");
        }
        if config.contains("functions-only") {
            let manifest = Manifest::new("test-misbehave", "0.1.0")
                .function("double", 1, Some(1), "twice the argument")
                .function("huge", 1, Some(1), "a JSON string of n bytes")
                .function("notjson", 0, Some(0), "text that is not JSON");
            return Ok((
                Misbehave {
                    config: config.to_string(),
                    prefixed: false,
                },
                manifest,
            ));
        }
        if config.contains("rule-output-only") {
            let manifest = Manifest::new("test-misbehave", "0.1.0").on_rule_output();
            return Ok((
                Misbehave {
                    config: config.to_string(),
                    prefixed: false,
                },
                manifest,
            ));
        }
        let parsed: Config = parse_config(config)?;
        let prefixed = parsed.filters.is_some();
        let filters = parsed.filters.unwrap_or_else(|| vec!["#".to_string()]);
        let manifest = Manifest::new("test-misbehave", "0.1.0")
            .authenticate()
            .authorize()
            .on_publish(filters)
            .on_event(EventSet::all())
            .on_rule_output()
            .function("double", 1, Some(1), "twice the argument")
            .function("huge", 1, Some(1), "a JSON string of n bytes")
            .function("notjson", 0, Some(0), "text that is not JSON");
        Ok((
            Misbehave {
                config: config.to_string(),
                prefixed,
            },
            manifest,
        ))
    }

    fn authenticate(&mut self, req: AuthRequest) -> AuthDecision {
        match req.username.as_deref() {
            Some("deny-0") => AuthDecision::Deny(0x00),
            Some("deny-10") => AuthDecision::Deny(0x10),
            Some("big-auth-data") => {
                AuthDecision::Allow(AuthAllow::user().with_auth_data(vec![7; 70_000]))
            }
            Some("trap") => panic!("asked to trap"),
            Some("loop") => spin(),
            Some("alice") if req.password.as_deref() == Some(b"secret") => {
                let allow = if req.client_id == "root" {
                    AuthAllow::superuser()
                } else {
                    AuthAllow::user()
                };
                AuthDecision::Allow(allow.with_attribute("config", &self.config))
            }
            Some("alice") => AuthDecision::Deny(reason::BAD_USERNAME_OR_PASSWORD),
            Some("carol") => match req.auth_data {
                Some(d) if d == b"response" => AuthDecision::Allow(AuthAllow::user()),
                _ => AuthDecision::challenge(b"challenge".to_vec(), Vec::new()),
            },
            Some(_) => AuthDecision::Ignore,
            None => AuthDecision::Deny(reason::NOT_AUTHORIZED),
        }
    }

    fn authorize(&mut self, req: AuthzRequest) -> AuthzDecision {
        if req.topic.starts_with("allowed/") {
            AuthzDecision::Allow
        } else if req.topic.starts_with("denied/") {
            AuthzDecision::Deny
        } else {
            AuthzDecision::Ignore
        }
    }

    /// The SDK's default (`on_publish` for each), except that a message on
    /// topic "short-batch" gets no decision: an answer that does not fit
    /// the batch.
    fn on_publish_batch(
        &mut self,
        batch: &Batch,
        publisher: Option<&Client>,
        out: &mut BatchDecisions,
    ) {
        for m in batch.iter() {
            let case = match m.topic.split_once('/') {
                Some((_, rest)) if self.prefixed => rest,
                _ => m.topic,
            };
            if case != "short-batch" {
                let decision = self.on_publish(m.to_message(), publisher.cloned());
                out.push(&m, decision);
            }
        }
    }

    fn on_publish(&mut self, mut m: Message, publisher: Option<Client>) -> PublishDecision {
        let case = if self.prefixed {
            m.topic
                .split_once('/')
                .map_or("", |(_, rest)| rest)
                .to_string()
        } else {
            m.topic.clone()
        };
        if let Some(what) = case.strip_prefix("bad/") {
            return bad(what, m);
        }
        match case.as_str() {
            "grow" => {
                m.payload = vec![b'g'; size(&m.payload, 0)];
                PublishDecision::Modify(m)
            }
            "recurse" => {
                let depth = recurse(std::hint::black_box(1));
                m.payload = depth.to_string().into_bytes();
                PublishDecision::Modify(m)
            }
            "trap" => panic!("asked to trap"),
            "loop" => spin(),
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    if hoard.len() == usize::MAX {
                        break PublishDecision::Pass;
                    }
                }
            }
            "deny" => PublishDecision::Deny(reason::PAYLOAD_FORMAT_INVALID),
            "drop" => PublishDecision::Drop,
            "kv" => {
                let out = match kv::set("k", &m.payload).and_then(|()| kv::get("k")) {
                    Ok(Some(v)) => v,
                    Ok(None) => b"missing".to_vec(),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                m.payload = out;
                PublishDecision::Modify(m)
            }
            "publish" => {
                let topic = format!("echo/{}", String::from_utf8_lossy(&m.payload));
                m.payload = match publish::publish(&Message::new(&topic, b"hi".to_vec())) {
                    Ok(()) => b"ok".to_vec(),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                PublishDecision::Modify(m)
            }
            "sql" => {
                m.payload = match sql::execute("SELECT 1", &[]) {
                    Ok(n) => n.to_string().into_bytes(),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                PublishDecision::Modify(m)
            }
            "kafka" => {
                m.payload = match kafka::produce("t", None, b"x", &[]) {
                    Ok(()) => b"ok".to_vec(),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                PublishDecision::Modify(m)
            }
            "clock" => {
                log::info("clock asked");
                m.payload = clock::now_millis().to_string().into_bytes();
                PublishDecision::Modify(m)
            }
            "fs" => {
                let file = std::fs::read_to_string("/etc/hostname")
                    .map(|_| "read".to_string())
                    .unwrap_or_else(|e| e.to_string());
                let dir = std::fs::read_dir("/")
                    .map(|_| "listed".to_string())
                    .unwrap_or_else(|e| e.to_string());
                let env = std::env::vars().count();
                let net = std::net::TcpStream::connect("127.0.0.1:1")
                    .map(|_| "connected".to_string())
                    .unwrap_or_else(|e| e.to_string());
                m.payload = format!("file={file};dir={dir};env={env};net={net}").into_bytes();
                PublishDecision::Modify(m)
            }
            t if t.starts_with("get/") => {
                m.payload = match kv::get(&t[4..]) {
                    Ok(Some(v)) => v,
                    Ok(None) => b"none".to_vec(),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                PublishDecision::Modify(m)
            }
            "who" => {
                m.payload = publisher
                    .map(|c| c.client_id)
                    .unwrap_or_default()
                    .into_bytes();
                PublishDecision::Modify(m)
            }
            _ => {
                m.payload.reverse();
                PublishDecision::Modify(m)
            }
        }
    }

    fn on_event(&mut self, event: Event, _timestamp_millis: u64) {
        let kind = match event {
            Event::Connected(_) => "connected",
            Event::Disconnected(_) => "disconnected",
            Event::Subscribed(_) => "subscribed",
            Event::Unsubscribed(_) => "unsubscribed",
            Event::Delivered(_) => "delivered",
            Event::Acked(_) => "acked",
            Event::Dropped(_) => "dropped",
        };
        let _ = kv::increment(&format!("events/{kind}"), 1);
    }

    fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
        // A slow, failing action: every call runs into the deadline.
        if rule == "slow" {
            spin();
        }
        if !rows_json.starts_with('[') {
            return Err(HookError::BadInput("expected a JSON array".into()));
        }
        kv::set(&format!("rule/{rule}"), rows_json.as_bytes())
            .map_err(|e| HookError::Failed(format!("{e:?}")))
    }

    fn call_function(&mut self, name: String, args: Vec<String>) -> Result<String, FunctionError> {
        match name.as_str() {
            "huge" => {
                let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                Ok(format!("\"{}\"", "h".repeat(n)))
            }
            "notjson" => Ok("{oops".to_string()),
            "double" => {
                let x: f64 = args.first().and_then(|a| a.parse().ok()).ok_or_else(|| {
                    FunctionError::BadArguments("double(x): x must be a number".into())
                })?;
                Ok((2.0 * x).to_string())
            }
            _ => Err(FunctionError::UnknownFunction(name)),
        }
    }
}

/// The payload read as a byte count, else `default`.
fn size(payload: &[u8], default: usize) -> usize {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// What no client could send, by case (`bad/<case>`).
fn bad(case: &str, mut m: Message) -> PublishDecision {
    let p = &mut m.properties;
    match case {
        "topic-hash" => m.topic = "#".into(),
        "topic-plus" => m.topic = "a/+/b".into(),
        "topic-empty" => m.topic = String::new(),
        "topic-long" => m.topic = "t".repeat(70_000),
        "topic-nul" => m.topic = "out/a\0b".into(),
        "dollar" => m.topic = "$SYS/brokers/spoofed".into(),
        "response-topic" => p.response_topic = Some("resp/#".into()),
        "utf8" => {
            p.payload_is_utf8 = true;
            m.payload = vec![0xff, 0xfe, 0xfd];
        }
        "big" => m.payload = vec![b'b'; size(&m.payload, 2 << 20)],
        "user-property-nul" => p.user_properties.push(("k".into(), "a\0b".into())),
        "correlation-big" => p.correlation_data = Some(vec![1; 70_000]),
        "deny-0" => return PublishDecision::Deny(0x00),
        "deny-10" => return PublishDecision::Deny(0x10),
        // The publish capability, with what no client could publish; the
        // hook itself answers with the capability's error as payload.
        "publish-hash" | "publish-big" | "publish-utf8" => {
            let mut out = Message::new("echo/x", b"x".to_vec());
            match case {
                "publish-hash" => out.topic = "echo/#".into(),
                "publish-big" => out.payload = vec![b'b'; 2 << 20],
                _ => {
                    out.properties.payload_is_utf8 = true;
                    out.payload = vec![0xff];
                }
            }
            m.payload = match publish::publish(&out) {
                Ok(()) => b"published".to_vec(),
                Err(e) => format!("{e:?}").into_bytes(),
            };
        }
        _ => m.payload = format!("unknown bad case {case}").into_bytes(),
    }
    PublishDecision::Modify(m)
}

/// Recurses until the stack runs out (the result defeats tail calls).
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    recurse(n + 1).wrapping_add(frame[(n % 64) as usize])
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

midge_sdk::export_plugin!(Misbehave);
