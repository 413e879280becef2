//! Helpers shared by the integration tests: the test registry (`pkgfs
//! serve`), real mounts, test data. Each test binary uses only some of
//! them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod data;
pub mod hostile;
pub mod mount;
pub mod server;
pub mod sync;

#[allow(unused_imports)]
pub use data::{data, sha256_hex};
