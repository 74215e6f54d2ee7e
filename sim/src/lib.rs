//! peergroup's whole-system simulator lives in this package's tests
//! (`sim/tests/simulator/`, run by `sim/tests/scenarios.rs`): many client sessions and the
//! server's registry over simulated links on a virtual clock, through thousands of seeded
//! scenarios whose every guarantee is checked. ARCHITECTURE.md, "Simulator", describes the
//! model and the checks; `SIM_SEED=<n> cargo test -p peergroup-sim` replays a seed.
//!
//! It is all test code on purpose: the simulator needs the client's `fuzzing` and the
//! server's `unstable-registry` features, and as dev-dependencies those are enabled only
//! in builds of tests (Cargo's resolver 2), never in the workspace's libraries and
//! binaries. This library is empty.
