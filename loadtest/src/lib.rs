//! Load generation for Molt: [`loadgen`] runs a scenario file against one
//! or more targets (`molt load`). The measuring scripts beside this crate
//! (`compare.sh`, `scale.sh`, `aiperf.sh`, `ab.sh`) run it, the data plane
//! and the mock provider (`molt mock-provider`, from `molt-fakes`) as
//! separate processes.

pub mod loadgen;
