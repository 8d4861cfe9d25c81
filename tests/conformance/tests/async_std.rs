//! The conformance suite on foreman-async-std (real time: async-std has no
//! virtual clock; the scenarios wait on conditions, never on margins).

use std::future::Future;
use std::pin::Pin;

use foreman_async_std::AsyncStdRuntime;
use foreman_conformance::Target;

struct AsyncStd;

impl Target for AsyncStd {
    type Runtime = AsyncStdRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        async_std::task::block_on(body);
    }
}

foreman_conformance::conformance_suite!(AsyncStd);
