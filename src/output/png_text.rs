//! A PNG's text chunks, read by walking the chunks: the pixels are never decoded.
//!
//! `sdgen show` and `generate --from` read PNGs from anywhere, and a 100-byte file whose
//! header claims 100000×100000 pixels must not make sdgen allocate 30 GB. Only the text
//! chunks (`tEXt`, `zTXt`, `iTXt`) are read into memory, each capped; image data and every
//! other chunk are skipped unread. Compressed text is inflated with a size limit (zip bombs).

use std::io::Read;

use crate::{Error, Result};

/// Largest text chunk read (compressed or not), and largest inflated text.
pub const MAX_TEXT_BYTES: usize = 64 << 20;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// The PNG specification's limit on a chunk's length.
const MAX_CHUNK_LEN: u32 = (1 << 31) - 1;

/// All text chunks of the PNG read from `r` as (key, text): `tEXt` first, then `zTXt`, then
/// `iTXt`, each in file order, compressed ones inflated. `name` is used in messages.
pub fn read_text_chunks_from(mut r: impl Read, name: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: String| Error::invalid(format!("{name} is not a readable PNG: {why}"));
    let mut sig = [0u8; 8];
    read_exact(&mut r, &mut sig).map_err(|e| bad(e.unwrap_or_else(|| "it is shorter than a PNG signature".into())))?;
    if &sig != SIGNATURE {
        return Err(bad("it does not start with the PNG signature".into()));
    }
    let (mut plain, mut compressed, mut international) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = true;
    // All text kept, inflated: many small chunks must not add up to more than one may hold.
    let mut total = 0usize;
    loop {
        let mut head = [0u8; 8];
        read_exact(&mut r, &mut head).map_err(|e| bad(e.unwrap_or_else(|| "it ends before its IEND chunk".into())))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
        let kind_str = String::from_utf8_lossy(&kind).into_owned();
        if len > MAX_CHUNK_LEN {
            return Err(bad(format!("chunk {kind_str:?} claims {len} bytes, more than PNG allows")));
        }
        if first && &kind != b"IHDR" {
            return Err(bad(format!("its first chunk is {kind_str:?}, not IHDR")));
        }
        first = false;
        match &kind {
            b"tEXt" | b"zTXt" | b"iTXt" => {
                if len as usize > MAX_TEXT_BYTES {
                    return Err(bad(format!("text chunk of {len} bytes is larger than {MAX_TEXT_BYTES}")));
                }
                let mut data = Vec::new();
                data.try_reserve_exact(len as usize + 4)
                    .map_err(|_| bad(format!("no memory for a text chunk of {len} bytes")))?;
                (&mut r)
                    .take(len as u64 + 4)
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("cannot read chunk {kind_str}: {e}")))?;
                if data.len() != len as usize + 4 {
                    return Err(bad(format!("it ends inside chunk {kind_str}")));
                }
                let crc = u32::from_be_bytes([
                    data[len as usize],
                    data[len as usize + 1],
                    data[len as usize + 2],
                    data[len as usize + 3],
                ]);
                data.truncate(len as usize);
                let mut h = crc32fast::Hasher::new();
                h.update(&kind);
                h.update(&data);
                if h.finalize() != crc {
                    return Err(bad(format!("chunk {kind_str} has a wrong CRC (the file is damaged)")));
                }
                let (list, parsed) = match &kind {
                    b"tEXt" => (&mut plain, parse_text(&data)),
                    b"zTXt" => (&mut compressed, parse_ztxt(&data)),
                    _ => (&mut international, parse_itxt(&data)),
                };
                let (key, value) = parsed.map_err(|why| bad(format!("chunk {kind_str}: {why}")))?;
                total = total.saturating_add(key.len() + value.len());
                list.push((key, value));
                if total > MAX_TEXT_BYTES {
                    return Err(bad(format!("its text chunks hold more than {MAX_TEXT_BYTES} bytes in all")));
                }
            }
            _ => {
                let skip = len as u64 + 4;
                let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
                    .map_err(|e| bad(format!("cannot read chunk {kind_str}: {e}")))?;
                if skipped != skip {
                    return Err(bad(format!("it ends inside chunk {kind_str}")));
                }
                if &kind == b"IEND" {
                    break;
                }
            }
        }
    }
    plain.extend(compressed);
    plain.extend(international);
    Ok(plain)
}

/// `read_exact` whose error is `None` at a clean end of file.
fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> std::result::Result<(), Option<String>> {
    r.read_exact(buf)
        .map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { None } else { Some(e.to_string()) })
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Splits at the first NUL: (before, after).
fn split_nul(data: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    let at = data.iter().position(|&b| b == 0).ok_or("no NUL after the keyword")?;
    Ok((&data[..at], &data[at + 1..]))
}

fn keyword(bytes: &[u8]) -> std::result::Result<String, String> {
    if bytes.is_empty() || bytes.len() > 79 {
        return Err(format!("keyword of {} bytes (1 to 79 allowed)", bytes.len()));
    }
    Ok(latin1(bytes))
}

fn inflate(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    fdeflate::decompress_to_vec_bounded(data, MAX_TEXT_BYTES).map_err(|e| match e {
        fdeflate::BoundedDecompressionError::OutputTooLarge { .. } => {
            format!("compressed text inflates to more than {MAX_TEXT_BYTES} bytes")
        }
        _ => "compressed text is not valid zlib data".to_string(),
    })
}

fn parse_text(data: &[u8]) -> std::result::Result<(String, String), String> {
    let (key, text) = split_nul(data)?;
    Ok((keyword(key)?, latin1(text)))
}

fn parse_ztxt(data: &[u8]) -> std::result::Result<(String, String), String> {
    let (key, rest) = split_nul(data)?;
    let key = keyword(key)?;
    match rest.split_first() {
        Some((0, z)) => Ok((key, latin1(&inflate(z)?))),
        Some((m, _)) => Err(format!("unknown compression method {m}")),
        None => Err("no compression method".into()),
    }
}

fn parse_itxt(data: &[u8]) -> std::result::Result<(String, String), String> {
    let (key, rest) = split_nul(data)?;
    let key = keyword(key)?;
    let [flag, method, rest @ ..] = rest else { return Err("no compression flag and method".into()) };
    let (_language, rest) = split_nul(rest).map_err(|_| "no NUL after the language tag".to_string())?;
    let (_translated, text) = split_nul(rest).map_err(|_| "no NUL after the translated keyword".to_string())?;
    let text = match (flag, method) {
        (0, _) => text.to_vec(),
        (1, 0) => inflate(text)?,
        (1, m) => return Err(format!("unknown compression method {m}")),
        (f, _) => return Err(format!("compression flag {f} is neither 0 nor 1")),
    };
    let text = String::from_utf8(text).map_err(|_| "text is not UTF-8".to_string())?;
    Ok((key, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        out.extend_from_slice(&h.finalize().to_be_bytes());
        out
    }

    /// A PNG whose header claims `w`×`h` pixels, with a tEXt chunk and no real image data.
    fn claimed(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = SIGNATURE.to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"tEXt", b"parameters\0a cat"));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
        png.extend(chunk(b"IEND", b""));
        png
    }

    #[test]
    fn huge_claimed_size_reads_text_without_pixels() {
        let png = claimed(100_000, 100_000);
        assert!(png.len() < 120, "{}", png.len());
        let got = read_text_chunks_from(png.as_slice(), "x.png").unwrap();
        assert_eq!(got, vec![("parameters".to_string(), "a cat".to_string())]);
    }

    #[test]
    fn many_text_chunks_cannot_add_up_past_the_limit() {
        // Each zTXt inflates 8 MiB of zeros from a few KiB; ten of them exceed 64 MiB in all.
        let value = vec![b'0'; 8 << 20];
        let mut data = b"k\0\0".to_vec();
        data.extend(fdeflate::compress_to_vec(&value));
        let mut png = claimed(1, 1);
        let end = png.len() - 12;
        let tail = png.split_off(end);
        for _ in 0..10 {
            png.extend(chunk(b"zTXt", &data));
        }
        png.extend(tail);
        let e = read_text_chunks_from(png.as_slice(), "x.png").unwrap_err().to_string();
        assert!(e.contains("in all"), "{e}");
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let png = claimed(1, 1);
        for cut in 0..png.len() - 1 {
            assert!(read_text_chunks_from(&png[..cut], "x.png").is_err(), "cut at {cut}");
        }
        let mut flipped = png.clone();
        flipped[8 + 25 + 10] ^= 1; // inside the tEXt data
        let e = read_text_chunks_from(flipped.as_slice(), "x.png").unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        let mut huge = png[..33].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(b"tEXt");
        assert!(read_text_chunks_from(huge.as_slice(), "x.png").unwrap_err().to_string().contains("more than PNG"));
    }
}
