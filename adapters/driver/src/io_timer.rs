//! The timer of the async-io reactor (smol's and async-std's), as an
//! [`AsyncTimer`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::runtime::AsyncTimer;

/// An `async_io::Timer` (the timer behind `smol::Timer` and
/// `async_std::task::sleep`) as an [`AsyncTimer`], for runtimes on the
/// async-io reactor.
#[derive(Debug)]
pub struct IoTimer(async_io::Timer);

impl IoTimer {
    /// A timer that fires at `deadline`.
    pub fn at(deadline: Instant) -> Self {
        IoTimer(async_io::Timer::at(deadline))
    }
}

impl AsyncTimer for IoTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}
