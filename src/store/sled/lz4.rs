//! LZ4 blocks as the sled store writes them: a one-byte tag, the length
//! of what was compressed (`u32` LE), then the block.
//!
//! Used where bytes are written on a commit's path: a commit's events
//! under `e/` (`sled/events.rs`) and the log's records (`sled/wal.rs`).
//! LZ4 because it costs a few microseconds for a batch's kilobytes, and
//! what it saves is the log's `fdatasync` touching fewer new disk blocks
//! and sled copying fewer bytes. (Old tombstones' packs, written in the
//! background, use zlib: `tombstones/pack_format.rs`.)
//!
//! Owns the framing and the bounded inflate. It must never allocate more
//! than its caller's bound for a length read from disk (a damaged length
//! is an error, not gigabytes), and never panic on damaged bytes.

/// `tag`, then `bytes` compressed behind their length, appended to `out`.
pub(super) fn compress_into(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    let block_at = out.len();
    out.resize(
        block_at + lz4_flex::block::get_maximum_output_size(bytes.len()),
        0,
    );
    let n = lz4_flex::block::compress_into(bytes, &mut out[block_at..])
        .expect("the buffer holds the largest output");
    out.truncate(block_at + n);
}

/// [`compress_into`] a new buffer.
pub(super) fn compress(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + lz4_flex::block::get_maximum_output_size(bytes.len()));
    compress_into(tag, bytes, &mut out);
    out
}

/// The bytes compressed in `framed` (what follows the tag), if they claim
/// at most `max` bytes; otherwise, or if they do not inflate to exactly
/// what they claim, what is wrong with them.
pub(super) fn inflate(framed: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let (len, block) = framed
        .split_first_chunk::<4>()
        .ok_or_else(|| "cut short".to_string())?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > max {
        return Err(format!("claims {len} bytes"));
    }
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(n) => Err(format!("{n} bytes, not {len}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_inflates_to_what_was_compressed_and_damage_is_an_error() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let framed = compress(b'Z', &bytes);
        assert_eq!(framed[0], b'Z');
        assert!(framed.len() < bytes.len() / 4, "{}", framed.len());
        assert_eq!(inflate(&framed[1..], bytes.len()).unwrap(), bytes);

        // A length past the caller's bound allocates nothing.
        assert!(
            inflate(&framed[1..], bytes.len() - 1)
                .unwrap_err()
                .contains("claims")
        );
        // A length that lies, a block cut short, nothing at all.
        let mut lying = framed[1..].to_vec();
        lying[..4].copy_from_slice(&4000u32.to_le_bytes());
        assert!(inflate(&lying, bytes.len()).is_err());
        assert!(inflate(&framed[1..framed.len() - 3], bytes.len()).is_err());
        assert!(inflate(&[1, 0], 10).is_err());
    }
}
