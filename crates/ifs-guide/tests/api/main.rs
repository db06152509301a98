//! API tests: the real `ifs-guide` app on a random loopback port with a throwaway `DATA_DIR`,
//! driven over HTTP, with an OpenAI-compatible agent double on another port.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod attacks;
mod auth;
mod binary;
mod deployment;
mod dialogue;
mod erasure;
mod errors;
mod export;
mod helpers;
mod input;
mod model;
mod outages;
mod persistence;
mod safety;
mod web;
