//! A header map as the host hands it over (`proxy_get_header_map_pairs`),
//! read in place: one buffer, and `(name, value)` slices into it.
//!
//! The SDK's reader copies every name and value into its own `String` and
//! `Vec` (two allocations a header, twenty for a common request) and traps
//! the VM on a map it cannot read. This one allocates the list of slices
//! only, and a buffer that does not hold together is `None`, which the
//! filter refuses with 503.
//!
//! The format (proxy-wasm ABI): the number of pairs `n` as a little-endian
//! u32; `n` pairs of little-endian u32 lengths (name, value); then each
//! name and each value in order, each followed by one NUL byte.

use crate::host::header_text as text;
#[cfg(test)]
use crate::host::NOT_TEXT;

/// The pairs of a serialized header map, borrowed from `bytes`. An empty
/// buffer is an empty map.
pub(crate) fn pairs(bytes: &[u8]) -> Option<Vec<(&str, &str)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    // Every pair takes at least its lengths and two NULs: a count the
    // buffer cannot hold is refused before anything is reserved for it.
    if count.checked_mul(10)? > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let lengths = 4 + n * 8;
        let name_len = usize::try_from(read_u32(bytes, lengths)?).ok()?;
        let value_len = usize::try_from(read_u32(bytes, lengths + 4)?).ok()?;
        let name = terminated(bytes, data, name_len)?;
        data += name_len + 1;
        let value = terminated(bytes, data, value_len)?;
        data += value_len + 1;
        out.push((text(name), text(value)));
    }
    Some(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// `len` bytes at `at`, which the buffer must follow with a NUL.
fn terminated(bytes: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    let end = at.checked_add(len)?;
    match bytes.get(end) {
        Some(0) => bytes.get(at..end),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The host's encoding of `map`.
    pub(crate) fn encode(map: &[(&[u8], &[u8])]) -> Vec<u8> {
        let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes();
        let mut out = len(&vec![0; map.len()]).to_vec();
        for (name, value) in map {
            out.extend(len(name));
            out.extend(len(value));
        }
        for (name, value) in map {
            for part in [name, value] {
                out.extend_from_slice(part);
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn reads_what_the_host_encodes() {
        let map: &[(&[u8], &[u8])] = &[
            (b":method", b"GET"),
            (b":path", b"/api/domain/odata/Customers?$top=1"),
            (b"authorization", b"Bearer abc.def.ghi"),
            (b"x-empty", b""),
            (b"", b"no name"),
        ];
        let text = |b: &[u8]| std::str::from_utf8(b).unwrap().to_owned();
        let expected: Vec<(String, String)> = map.iter().map(|(n, v)| (text(n), text(v))).collect();
        let read: Vec<(String, String)> = pairs(&encode(map))
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(pairs(&encode(&[])), Some(vec![]));
        assert_eq!(pairs(b""), Some(vec![]));
    }

    #[test]
    fn text_that_is_not_utf8_reads_as_the_replacement_character() {
        let map: &[(&[u8], &[u8])] = &[(b"authorization", b"Bearer \xff\xfe"), (b"x-\xc3", b"v")];
        assert_eq!(
            pairs(&encode(map)),
            Some(vec![("authorization", NOT_TEXT), (NOT_TEXT, "v")])
        );
    }

    #[test]
    fn a_buffer_that_does_not_hold_together_is_refused() {
        let good = encode(&[(b"authorization", b"Bearer x"), (b"host", b"erp.test")]);
        assert!(pairs(&good).is_some());
        // Cut anywhere: too short for what it announces.
        for cut in 1..good.len() {
            assert_eq!(pairs(&good[..cut]), None, "cut at {cut}");
        }
        // A missing NUL after any name or value.
        for at in (0..good.len()).filter(|&i| good[i] == 0 && i > 20) {
            let mut bad = good.clone();
            bad[at] = b'x';
            assert_eq!(pairs(&bad), None, "no NUL at {at}");
        }
        // Lengths past the end, or so large they overflow.
        for (at, value) in [(4, 1000), (8, u32::MAX), (0, u32::MAX), (0, 3)] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
            assert_eq!(pairs(&bad), None, "{value} at {at}");
        }
    }

    #[test]
    fn trailing_bytes_after_the_last_pair_are_ignored_as_the_sdk_does() {
        let mut buffer = encode(&[(b"a", b"b")]);
        buffer.extend(b"junk");
        assert_eq!(pairs(&buffer), Some(vec![("a", "b")]));
    }
}
