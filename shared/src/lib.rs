//! flowpack's shared library: credential and mapping models, the `flowpack-bundle/1` format,
//! Ed25519 signing and age/ChaCha20-Poly1305 sealing. Used by the packager and the receiver.
//!
//! This crate does no network or database I/O; it reads and writes files and streams only.
//!
//! Which API to use when:
//! - Load a designer's records: [`model::credential::CredentialFile::parse`] then
//!   [`resolve`](model::credential::CredentialFile::resolve) for an environment;
//!   [`model::mapping::Mapping::parse`].
//! - Write a bundle: [`bundle::write::write_bundle`] with a [`keys::SigningKey`].
//! - Verify a bundle: [`bundle::read::OpenBundle::open`], then
//!   [`check_times`](bundle::read::OpenBundle::check_times), then
//!   [`read_payload`](bundle::read::OpenBundle::read_payload) (with the receiver's
//!   [`seal::SealingIdentity`] to open sealed values).
//! - Names and paths from outside: [`names`] — parse them once, at the edge.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod keys;
pub mod model;
pub mod names;
pub mod seal;
pub mod secret;
pub mod timefmt;
pub mod zipfmt;

pub use secret::Secret;
