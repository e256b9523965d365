//! gRPC error helpers: the (code, message) pair etcd clients see.

use std::fmt;

use anyhow::{bail, Result};

/// A gRPC status as observed by the client: code name (tonic's `Code` Debug
/// name, e.g. "OutOfRange") and message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrpcError {
    /// e.g. "InvalidArgument".
    pub code: String,
    /// e.g. "etcdserver: key is not provided".
    pub message: String,
}

impl GrpcError {
    /// Builds the expected error from literals.
    pub fn new(code: &str, message: &str) -> GrpcError {
        GrpcError {
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.code, self.message)
    }
}

/// The gRPC status carried by `e`, if it is one (not a transport failure).
pub fn grpc_error(e: &etcd_client::Error) -> Option<GrpcError> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(GrpcError {
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        }),
        _ => None,
    }
}

/// Expects `r` to be a gRPC error status; anything else is an error.
pub fn expect_grpc_error<T: fmt::Debug>(
    what: &str,
    r: std::result::Result<T, etcd_client::Error>,
) -> Result<GrpcError> {
    match r {
        Ok(v) => bail!("{what}: expected a gRPC error, got success: {v:?}"),
        Err(e) => match grpc_error(&e) {
            Some(g) => Ok(g),
            None => bail!("{what}: expected a gRPC error status, got a non-status error: {e}"),
        },
    }
}
