//! The connection's tracing span (`conn{client_id, peer, listener}`), held
//! only while the connection is active. A span lives in the subscriber's
//! registry with its fields formatted into a string, a few hundred bytes per
//! connection: an idle connection drops it ([`release`], called by the
//! connection's loop when it releases its buffers, see `super::idle`) and
//! the next wake-up makes it again, with the same fields, so every line a
//! connection logs still carries them, and `[log] trace_clients` filters
//! still match.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::{info_span, Span};

thread_local! {
    /// Set by [`release`] during a poll of the connection's future.
    static RELEASE: Cell<bool> = const { Cell::new(false) };
    /// Set by [`client_id`] during a poll: the id the broker assigned.
    static CLIENT_ID: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// From inside a connection's task: drop the span once this poll returns.
pub fn release() {
    RELEASE.with(|r| r.set(true));
}

/// From inside a connection's task: the client id to name in the span
/// from now on (recorded in the current span too).
pub fn client_id(id: &Arc<str>) {
    Span::current().record("client_id", &**id);
    CLIENT_ID.with(|c| *c.borrow_mut() = Some(id.clone()));
}

pin_project_lite::pin_project! {
    /// A connection's future run in its span, made lazily.
    #[derive(Debug)]
    pub struct InConnSpan<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
        client_id: Option<Arc<str>>,
        peer: SocketAddr,
        listener: &'static str,
    }
}

impl<F> InConnSpan<F> {
    pub fn new(
        inner: F,
        client_id: Option<Arc<str>>,
        peer: SocketAddr,
        listener: &'static str,
    ) -> Self {
        InConnSpan {
            inner,
            span: None,
            client_id,
            peer,
            listener,
        }
    }
}

impl<F: Future> Future for InConnSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let span = this.span.get_or_insert_with(|| {
            let span = info_span!(
                "conn",
                client_id = tracing::field::Empty,
                peer = %this.peer,
                listener = *this.listener
            );
            if let Some(id) = this.client_id.as_deref() {
                span.record("client_id", id);
            }
            span
        });
        let out = {
            let _entered = span.enter();
            this.inner.poll(cx)
        };
        if let Some(id) = CLIENT_ID.with(|c| c.borrow_mut().take()) {
            *this.client_id = Some(id);
        }
        if RELEASE.with(|r| r.replace(false)) && out.is_pending() {
            *this.span = None;
        }
        out
    }
}
