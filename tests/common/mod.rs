//! Shared helpers of the end-to-end tests: the test registry
//! (`pkgfs serve`), real mounts, and test data.

#![allow(dead_code)]

pub mod data;
pub mod mount;
pub mod server;

pub use data::{data, sha256_hex};
