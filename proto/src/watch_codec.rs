//! The codec of the server's Watch stream.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::cairnpb::wire::WatchResponse;
use crate::etcdserverpb::WatchRequest;

/// How many encoded bytes a watch stream hands HTTP/2 at a time. tonic
/// gathers ready messages into one chunk until it reaches this size (its
/// default is 32 KiB), and HTTP/2 holds about two chunks per stream while
/// the client's window is closed. With 10,000 watch streams behind a slow
/// client that is what the server's memory grows by (1.6-1.9 GB at 32 KiB,
/// 0.8-0.9 GB at 8 KiB, in docs/benchmarks.md's fan-out run), for no gain in
/// throughput: HTTP/2 frames are 16 KiB anyway.
pub const WATCH_CHUNK_BYTES: usize = 8 * 1024;

/// prost encoding with [`WATCH_CHUNK_BYTES`] chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchResponse;
    type Decode = WatchRequest;
    type Encoder = ProstEncoder<WatchResponse>;
    type Decoder = ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(WATCH_CHUNK_BYTES, WATCH_CHUNK_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}
