//! The conformance suite on foreman-smol (real time: smol has no virtual
//! clock; the scenarios wait on conditions, never on margins). The body
//! runs in `smol::block_on`; spawned tasks go to smol's global executor.

use std::future::Future;
use std::pin::Pin;

use foreman_conformance::Target;
use foreman_smol::SmolRuntime;

struct Smol;

impl Target for Smol {
    type Runtime = SmolRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        smol::block_on(body);
    }
}

foreman_conformance::conformance_suite!(Smol);
