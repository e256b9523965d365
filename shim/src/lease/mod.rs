//! Leases: expiry bookkeeping and the gRPC service.

mod lessor;
mod service;

pub use lessor::Lessor;
pub use service::LeaseService;
