use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

type OwnedRow = Vec<Option<Vec<u8>>>;

fn header(flags: u32, extension: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write::header(&mut v, flags, extension);
    v
}

fn tuple(v: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
    write::tuple(v, fields.iter().copied());
}

use write::trailer;

/// A valid stream of three-field rows with random contents, and its rows.
fn random_stream(rng: &mut StdRng, rows: usize) -> (Vec<u8>, Vec<OwnedRow>) {
    let ext: Vec<u8> = (0..rng.gen_range(0..6)).map(|_| rng.gen()).collect();
    let mut s = header(if rng.gen() { 0 } else { 1 << 17 }, &ext);
    let mut expected = Vec::new();
    for _ in 0..rows {
        let row: OwnedRow = (0..3)
            .map(|_| {
                if rng.gen_ratio(1, 5) {
                    None
                } else {
                    let n = rng.gen_range(0..40);
                    Some((0..n).map(|_| rng.gen()).collect())
                }
            })
            .collect();
        let borrowed: Vec<Option<&[u8]>> = row.iter().map(|f| f.as_deref()).collect();
        tuple(&mut s, &borrowed);
        expected.push(row);
    }
    trailer(&mut s);
    (s, expected)
}

/// Frames `chunks` in order; the rows read before the first error, and how the stream ended.
fn frame_chunks<'a>(
    fields: usize,
    limit: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<OwnedRow>, Result<u64, FrameError>) {
    let mut framer = CopyFramer::new(fields, limit);
    let mut rows = Vec::new();
    for chunk in chunks {
        let mut it = framer.feed(chunk);
        loop {
            match it.next() {
                Ok(Some(row)) => {
                    assert_eq!(row.len(), fields);
                    rows.push(row.fields().map(|f| f.map(<[u8]>::to_vec)).collect());
                }
                Ok(None) => break,
                Err(e) => {
                    drop(it);
                    assert_eq!(framer.finish(), Err(e.clone()), "errors are sticky");
                    return (rows, Err(e));
                }
            }
        }
        drop(it);
        assert!(framer.buffered() <= limit + 4);
    }
    let end = framer.finish();
    (rows, end)
}

/// Cuts `stream` into pieces of the sizes `next_size` gives (at least 1).
fn cut(stream: &[u8], mut next_size: impl FnMut() -> usize) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = next_size().clamp(1, rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces
}

fn frame(stream: &[u8], fields: usize) -> (Vec<OwnedRow>, Result<u64, FrameError>) {
    frame_chunks(fields, DEFAULT_MAX_ROW_BYTES, [stream])
}

#[test]
fn any_chunking_gives_the_same_rows() {
    let mut rng = StdRng::seed_from_u64(1);
    let (stream, expected) = random_stream(&mut rng, 60);
    let whole = (expected.clone(), Ok(60));
    assert_eq!(frame(&stream, 3), whole);
    for size in 1..50 {
        let pieces = cut(&stream, || size);
        assert_eq!(frame_chunks(3, 1 << 20, pieces), whole, "size {size}");
    }
    for _ in 0..200 {
        let pieces = cut(&stream, || rng.gen_range(0..80));
        assert_eq!(frame_chunks(3, 1 << 20, pieces), whole);
    }
    // Empty chunks change nothing.
    let mut pieces = cut(&stream, || 7);
    pieces.insert(3, &[]);
    pieces.push(&[]);
    assert_eq!(frame_chunks(3, 1 << 20, pieces), whole);
}

/// Rows inside one chunk are views of the chunk; PostgreSQL's own chunking (one tuple per
/// message) never needs the carry-over buffer.
#[test]
fn rows_within_a_chunk_are_not_copied() {
    let mut rng = StdRng::seed_from_u64(2);
    let (stream, expected) = random_stream(&mut rng, 30);
    let range = stream.as_ptr_range();
    let mut framer = CopyFramer::new(3, DEFAULT_MAX_ROW_BYTES);
    let mut it = framer.feed(&stream);
    let mut n = 0;
    while let Some(row) = it.next().unwrap() {
        for field in row.fields().flatten() {
            assert!(range.contains(&field.as_ptr()) || field.is_empty());
        }
        n += 1;
    }
    drop(it);
    assert_eq!(framer.finish(), Ok(30));
    assert_eq!(n, expected.len());

    // Header with the first tuple, then a tuple per message, then the trailer.
    let header_len = HEADER_LEN + u32::from_be_bytes(stream[15..19].try_into().unwrap()) as usize;
    let mut messages = Vec::new();
    let mut at = header_len;
    for row in &expected {
        let len = 2 + row
            .iter()
            .map(|f| 4 + f.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
        messages.push(at..at + len);
        at += len;
    }
    messages[0].start = 0;
    messages.push(at..stream.len());
    let mut framer = CopyFramer::new(3, DEFAULT_MAX_ROW_BYTES);
    for m in messages {
        let mut it = framer.feed(&stream[m]);
        while it.next().unwrap().is_some() {}
        drop(it);
        assert_eq!(framer.buffered(), 0);
    }
    assert_eq!(framer.finish(), Ok(30));
}

#[test]
fn split_rows_are_buffered_only_as_far_as_needed() {
    let mut s = header(0, b"");
    let big = vec![7u8; 10_000];
    tuple(&mut s, &[Some(&big), None, Some(b"x")]);
    trailer(&mut s);
    let mut framer = CopyFramer::new(3, 20_000);
    let mut most = 0;
    for piece in cut(&s, || 100) {
        let mut it = framer.feed(piece);
        while let Some(row) = it.next().unwrap() {
            let fields: Vec<_> = row.fields().collect();
            assert_eq!(fields, [Some(&big[..]), None, Some(&b"x"[..])]);
        }
        drop(it);
        most = most.max(framer.buffered());
    }
    assert_eq!(framer.finish(), Ok(1));
    // Never more than the row itself.
    let row_len = 2 + 4 + 10_000 + 4 + 4 + 1;
    assert!(most > 9_900 && most <= row_len, "{most}");
}

#[test]
fn truncated_streams() {
    let mut rng = StdRng::seed_from_u64(3);
    let (stream, _) = random_stream(&mut rng, 10);
    for n in 0..stream.len() {
        let (_, end) = frame(&stream[..n], 3);
        assert_eq!(end, Err(FrameError::Truncated), "prefix {n}");
    }
}

#[test]
fn malformed_streams() {
    let end = |bytes: &[u8]| frame(bytes, 1).1;
    assert_eq!(end(b"PGCOPX"), Err(FrameError::Signature));
    assert_eq!(end(b"X"), Err(FrameError::Signature));
    assert_eq!(end(&header(1 << 16, b"")), Err(FrameError::Flags(1 << 16)));
    assert_eq!(end(&header(1, b"")), Err(FrameError::Flags(1)));
    // Non-critical flag bits are ignored, and so is the extension's content.
    let mut ok = header(1 << 20, b"anything");
    trailer(&mut ok);
    assert_eq!(end(&ok), Ok(0));

    let mut s = header(0, b"");
    tuple(&mut s, &[Some(b"ab"), Some(b"cd")]);
    assert_eq!(
        end(&s),
        Err(FrameError::FieldCount {
            expected: 1,
            got: 2
        })
    );
    let mut s = header(0, b"");
    s.extend_from_slice(&(-2i16).to_be_bytes());
    assert_eq!(
        end(&s),
        Err(FrameError::FieldCount {
            expected: 1,
            got: -2
        })
    );
    let mut s = header(0, b"");
    s.extend_from_slice(&1i16.to_be_bytes());
    s.extend_from_slice(&(-2i32).to_be_bytes());
    assert_eq!(
        end(&s),
        Err(FrameError::FieldLength {
            column: 0,
            length: -2
        })
    );
    let mut s = header(0, b"");
    s.extend_from_slice(&1i16.to_be_bytes());
    s.extend_from_slice(&i32::MIN.to_be_bytes());
    assert!(matches!(end(&s), Err(FrameError::FieldLength { .. })));
    let mut s = header(0, b"");
    trailer(&mut s);
    s.push(0);
    assert_eq!(end(&s), Err(FrameError::TrailingData));
    // Data after the trailer in a later chunk is found too.
    let mut s = header(0, b"");
    trailer(&mut s);
    assert_eq!(
        frame_chunks(1, 100, [&s[..], b"x"]).1,
        Err(FrameError::TrailingData)
    );
    let mut s = header(0, b"");
    s[15..19].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(end(&s), Err(FrameError::Extension));
    // A zero-field row is fine when zero fields are expected.
    let mut s = header(0, b"");
    tuple(&mut s, &[]);
    trailer(&mut s);
    assert_eq!(frame(&s, 0), (vec![vec![]], Ok(1)));
}

/// A field or row over the limit is refused as soon as its length word is read, before its
/// data arrives: nothing is gathered for it.
#[test]
fn oversized_rows_are_refused_early() {
    let mut s = header(0, b"");
    s.extend_from_slice(&1i16.to_be_bytes());
    s.extend_from_slice(&i32::MAX.to_be_bytes());
    let (_, end) = frame_chunks(1, 1 << 20, cut(&s, || 3));
    assert_eq!(end, Err(FrameError::RowTooLarge { limit: 1 << 20 }));

    // Three fields of 400 bytes: each within a 1000-byte limit, the row is not.
    let mut s = header(0, b"");
    let f = [0u8; 400];
    tuple(&mut s, &[Some(&f), Some(&f), Some(&f)]);
    trailer(&mut s);
    let (rows, end) = frame_chunks(3, 1000, [&s[..]]);
    assert!(rows.is_empty());
    assert_eq!(end, Err(FrameError::RowTooLarge { limit: 1000 }));
    assert_eq!(frame_chunks(3, 2 + 3 * 404, cut(&s, || 50)).1, Ok(1));
    assert_eq!(
        frame_chunks(3, 2 + 3 * 404 - 1, cut(&s, || 50)).1,
        Err(FrameError::RowTooLarge {
            limit: 2 + 3 * 404 - 1
        })
    );
}

#[test]
fn a_chunk_left_unread_fails_the_stream() {
    let mut rng = StdRng::seed_from_u64(4);
    let (stream, _) = random_stream(&mut rng, 5);
    let mut framer = CopyFramer::new(3, DEFAULT_MAX_ROW_BYTES);
    let mut it = framer.feed(&stream);
    assert!(it.next().unwrap().is_some());
    drop(it);
    assert_eq!(framer.finish(), Err(FrameError::Abandoned));
    let mut it = framer.feed(&stream);
    assert_eq!(it.next().err(), Some(FrameError::Abandoned));
}

/// Seeded random corruptions of valid streams, cut at random: never a panic, and the same rows
/// and the same end whatever the cutting.
#[test]
fn fuzz_corrupted_streams() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut errors = 0;
    for _ in 0..3000 {
        let rows = rng.gen_range(0..6);
        let (mut stream, _) = random_stream(&mut rng, rows);
        for _ in 0..rng.gen_range(1..4) {
            if stream.is_empty() {
                break;
            }
            let at = rng.gen_range(0..stream.len());
            match rng.gen_range(0..5) {
                0 => stream[at] = rng.gen(),
                1 => stream[at] ^= 0x80,
                2 => {
                    stream.remove(at);
                }
                3 => stream.insert(at, rng.gen()),
                _ => stream.truncate(at),
            }
        }
        let limit = if rng.gen() { 64 } else { DEFAULT_MAX_ROW_BYTES };
        let whole = frame_chunks(3, limit, [&stream[..]]);
        errors += usize::from(whole.1.is_err());
        for _ in 0..3 {
            let pieces = cut(&stream, || rng.gen_range(1..24));
            assert_eq!(frame_chunks(3, limit, pieces), whole);
        }
    }
    assert!(errors > 1000, "the corruptions must hit errors ({errors})");
}
