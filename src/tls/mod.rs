//! TLS: the local CA, rustls configurations for both sides, certificate facts
//! for the record.

pub mod ca;
pub mod config;
pub mod info;
pub mod instructions;
