//! Prints every top-level bucket of a bbolt file and its keys and values,
//! escaped: `cargo run -p cairn-bbolt --example dump -- FILE`.

use std::io::Write;

fn escape(b: &[u8]) -> String {
    b.iter()
        .flat_map(|c| std::ascii::escape_default(*c))
        .map(char::from)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: dump FILE")?;
    let db = cairn_bbolt::Db::open(std::path::Path::new(&path))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "page size {}, size {}, txid {}",
        db.page_size(),
        db.size(),
        db.meta_txid()
    )?;
    for name in db.bucket_names()? {
        writeln!(out, "[{}]", escape(&name))?;
        if let Some(bucket) = db.bucket(&name)? {
            for e in bucket.entries() {
                let e = e?;
                writeln!(out, "  {} = {}", escape(&e.key), escape(&e.value))?;
            }
        }
    }
    Ok(())
}
