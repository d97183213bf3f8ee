//! Helpers for core's behaviour tests that need real infrastructure.

pub mod gate;
pub mod zk;
