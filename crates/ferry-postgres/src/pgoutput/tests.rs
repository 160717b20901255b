use rand::{Rng, SeedableRng};

use super::*;

/// Builds a message the way pgoutput writes it.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn tag(t: u8) -> W {
        W(vec![t])
    }
    fn u8(mut self, v: u8) -> W {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> W {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> W {
        self.0.extend_from_slice(b);
        self
    }
    /// TupleData: `None` null, `Some(None)` unchanged TOAST, `Some(Some(t))` text.
    fn tuple(self, cols: &[Option<Option<&str>>]) -> W {
        let mut w = self.u16(cols.len() as u16);
        for c in cols {
            w = match c {
                None => w.u8(b'n'),
                Some(None) => w.u8(b'u'),
                Some(Some(t)) => w.u8(b't').i32(t.len() as i32).raw(t.as_bytes()),
            };
        }
        w
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn text(s: &str) -> TupleColumn {
    TupleColumn::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn tuple(cols: Vec<TupleColumn>) -> TupleData {
    TupleData { columns: cols }
}

const T: i64 = 774_000_000_123_456;

/// Every message type, in and out of a streamed block: (bytes, in_stream, expected).
fn samples() -> Vec<(Bytes, bool, PgOutputMessage)> {
    let row = [Some(Some("1")), None, Some(None)];
    let decoded_row = || {
        tuple(vec![
            text("1"),
            TupleColumn::Null,
            TupleColumn::UnchangedToast,
        ])
    };
    let mut out = vec![
        (
            W::tag(b'B').u64(0x16_B374_D848).i64(T).u32(742).bytes(),
            false,
            PgOutputMessage::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time_micros: T,
                xid: 742,
            },
        ),
        (
            W::tag(b'C').u8(0).u64(100).u64(180).i64(T).bytes(),
            false,
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(100),
                end_lsn: Lsn(180),
                commit_time_micros: T,
            },
        ),
        (
            W::tag(b'O').u64(77).str("node_a").bytes(),
            false,
            PgOutputMessage::Origin {
                commit_lsn: Lsn(77),
                name: "node_a".into(),
            },
        ),
        (
            W::tag(b'Y').u32(16_400).str("").str("mood").bytes(),
            false,
            PgOutputMessage::Type(TypeBody {
                xid: None,
                id: 16_400,
                namespace: "pg_catalog".into(),
                name: "mood".into(),
            }),
        ),
        (
            W::tag(b'T').u32(2).u8(3).u32(16_384).u32(16_390).bytes(),
            false,
            PgOutputMessage::Truncate {
                xid: None,
                cascade: true,
                restart_identity: true,
                relation_ids: vec![16_384, 16_390],
            },
        ),
        (
            W::tag(b'T').u32(9).u32(1).u8(1).u32(16_384).bytes(),
            true,
            PgOutputMessage::Truncate {
                xid: Some(9),
                cascade: true,
                restart_identity: false,
                relation_ids: vec![16_384],
            },
        ),
        (
            W::tag(b'M')
                .u8(1)
                .u64(555)
                .str("p")
                .u32(1)
                .raw(b"x")
                .bytes(),
            false,
            PgOutputMessage::Message {
                xid: None,
                transactional: true,
                lsn: Lsn(555),
                prefix: "p".into(),
                content: Bytes::from_static(b"x"),
            },
        ),
        (
            W::tag(b'M').u32(9).u8(0).u64(555).str("p").u32(0).bytes(),
            true,
            PgOutputMessage::Message {
                xid: Some(9),
                transactional: false,
                lsn: Lsn(555),
                prefix: "p".into(),
                content: Bytes::new(),
            },
        ),
        (
            W::tag(b'S').u32(9).u8(1).bytes(),
            false,
            PgOutputMessage::StreamStart {
                xid: 9,
                first_segment: true,
            },
        ),
        (W::tag(b'E').bytes(), true, PgOutputMessage::StreamStop),
        (
            W::tag(b'c').u32(9).u8(0).u64(300).u64(340).i64(T).bytes(),
            false,
            PgOutputMessage::StreamCommit {
                xid: 9,
                flags: 0,
                commit_lsn: Lsn(300),
                end_lsn: Lsn(340),
                commit_time_micros: T,
            },
        ),
        (
            W::tag(b'A').u32(9).u32(11).bytes(),
            false,
            PgOutputMessage::StreamAbort {
                xid: 9,
                subxid: 11,
                abort_lsn: None,
                abort_time_micros: None,
            },
        ),
    ];
    for (in_stream, xid) in [(false, None), (true, Some(9))] {
        let head = |t: u8| match xid {
            Some(x) => W::tag(t).u32(x),
            None => W::tag(t),
        };
        out.push((
            head(b'R')
                .u32(16_384)
                .str("public")
                .str("t")
                .u8(b'd')
                .u16(2)
                .u8(1)
                .str("id")
                .u32(23)
                .i32(-1)
                .u8(0)
                .str("v")
                .u32(1043)
                .i32(14)
                .bytes(),
            in_stream,
            PgOutputMessage::Relation(RelationBody {
                xid,
                id: 16_384,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "v".into(),
                        type_oid: 1043,
                        type_modifier: 14,
                    },
                ],
            }),
        ));
        out.push((
            head(b'I').u32(16_384).u8(b'N').tuple(&row).bytes(),
            in_stream,
            PgOutputMessage::Insert {
                xid,
                relation_id: 16_384,
                new: decoded_row(),
            },
        ));
        out.push((
            head(b'U').u32(16_384).u8(b'N').tuple(&row).bytes(),
            in_stream,
            PgOutputMessage::Update {
                xid,
                relation_id: 16_384,
                old: None,
                new: decoded_row(),
            },
        ));
        out.push((
            head(b'U')
                .u32(16_384)
                .u8(b'K')
                .tuple(&[Some(Some("0")), None, None])
                .u8(b'N')
                .tuple(&row)
                .bytes(),
            in_stream,
            PgOutputMessage::Update {
                xid,
                relation_id: 16_384,
                old: Some(OldTuple::Key(tuple(vec![
                    text("0"),
                    TupleColumn::Null,
                    TupleColumn::Null,
                ]))),
                new: decoded_row(),
            },
        ));
        out.push((
            head(b'U')
                .u32(16_384)
                .u8(b'O')
                .tuple(&[Some(Some("0"))])
                .u8(b'N')
                .tuple(&[Some(Some("1"))])
                .bytes(),
            in_stream,
            PgOutputMessage::Update {
                xid,
                relation_id: 16_384,
                old: Some(OldTuple::Full(tuple(vec![text("0")]))),
                new: tuple(vec![text("1")]),
            },
        ));
        out.push((
            head(b'D')
                .u32(16_384)
                .u8(b'K')
                .tuple(&[Some(Some("1"))])
                .bytes(),
            in_stream,
            PgOutputMessage::Delete {
                xid,
                relation_id: 16_384,
                old: OldTuple::Key(tuple(vec![text("1")])),
            },
        ));
        out.push((
            head(b'D').u32(16_384).u8(b'O').tuple(&row).bytes(),
            in_stream,
            PgOutputMessage::Delete {
                xid,
                relation_id: 16_384,
                old: OldTuple::Full(decoded_row()),
            },
        ));
    }
    out
}

#[test]
fn decodes_every_message_type() {
    for (bytes, in_stream, expected) in samples() {
        assert_eq!(decode(bytes.clone(), in_stream), Ok(expected), "{bytes:?}");
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (bytes, in_stream, _) in samples() {
        for cut in 0..bytes.len() {
            let r = decode(bytes.slice(..cut), in_stream);
            assert!(
                matches!(r, Err(DecodeError::Truncated { .. } | DecodeError::Empty)),
                "{:?} cut at {cut}: {r:?}",
                &bytes[..]
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for (bytes, in_stream, _) in samples() {
        let mut longer = bytes.to_vec();
        longer.push(0);
        // A Stream Abort may grow by 16 bytes (protocol 4), not by one.
        assert!(
            decode(Bytes::from(longer), in_stream).is_err(),
            "{:?}",
            &bytes[..]
        );
    }
}

#[test]
fn values_share_the_buffer() {
    let bytes = W::tag(b'I')
        .u32(1)
        .u8(b'N')
        .tuple(&[Some(Some("hello"))])
        .bytes();
    let Ok(PgOutputMessage::Insert { new, .. }) = decode(bytes.clone(), false) else {
        panic!("not an insert");
    };
    let TupleColumn::Text(v) = &new.columns[0] else {
        panic!("not text");
    };
    assert_eq!(&v[..], b"hello");
    let offset = v.as_ptr() as usize - bytes.as_ptr() as usize;
    assert_eq!(
        offset,
        bytes.len() - 5,
        "the value is a slice of the message"
    );
}

#[test]
fn binary_values_and_replica_identities() {
    let bytes = W::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b'b')
        .i32(4)
        .raw(&[0, 0, 0, 7])
        .bytes();
    let Ok(PgOutputMessage::Insert { new, .. }) = decode(bytes, false) else {
        panic!("not an insert");
    };
    assert_eq!(
        new.columns,
        [TupleColumn::Binary(Bytes::from_static(&[0, 0, 0, 7]))]
    );
    for (b, ident) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let bytes = W::tag(b'R').u32(1).str("s").str("t").u8(b).u16(0).bytes();
        let Ok(PgOutputMessage::Relation(rel)) = decode(bytes, false) else {
            panic!("not a relation");
        };
        assert_eq!(rel.replica_identity, ident);
    }
}

#[test]
fn stream_abort_of_protocol_4_carries_lsn_and_time() {
    let bytes = W::tag(b'A').u32(9).u32(9).u64(400).i64(T).bytes();
    assert_eq!(
        decode(bytes, false),
        Ok(PgOutputMessage::StreamAbort {
            xid: 9,
            subxid: 9,
            abort_lsn: Some(Lsn(400)),
            abort_time_micros: Some(T),
        })
    );
    let torn = W::tag(b'A').u32(9).u32(9).u64(400).bytes();
    assert!(matches!(
        decode(torn, false),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn malformed_fields_are_typed_errors() {
    let cases: Vec<(Bytes, &str)> = vec![
        (Bytes::new(), "empty"),
        (W::tag(b'Z').bytes(), "unknown"),
        (W::tag(b'I').u32(1).u8(b'X').u16(0).bytes(), "N"),
        (
            W::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'K').u16(0).bytes(),
            "N",
        ),
        (W::tag(b'D').u32(1).u8(b'N').u16(0).bytes(), "K"),
        (
            W::tag(b'R')
                .u32(1)
                .str("s")
                .str("t")
                .u8(b'x')
                .u16(0)
                .bytes(),
            "replica identity",
        ),
        (
            W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'q').bytes(),
            "column kind",
        ),
        (
            W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes(),
            "negative",
        ),
        (W::tag(b'T').i32(-1).u8(0).bytes(), "negative"),
        (
            W::tag(b'M').u8(1).u64(1).str("p").i32(-5).bytes(),
            "negative",
        ),
        (W::tag(b'O').u64(1).raw(&[0xff, 0xfe, 0]).bytes(), "UTF-8"),
        (
            W::tag(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b't')
                .i32(i32::MAX)
                .bytes(),
            "truncated",
        ),
        (W::tag(b'T').u32(u32::MAX >> 1).u8(0).bytes(), "truncated"),
    ];
    for (bytes, expect) in cases {
        let err = decode(bytes.clone(), false).expect_err("malformed");
        assert!(
            err.to_string().contains(expect),
            "{:?}: {err} (expected {expect:?})",
            &bytes[..]
        );
    }
}

#[test]
fn decoder_tracks_streamed_blocks() {
    let mut d = PgOutputDecoder::new();
    let insert_with_xid = W::tag(b'I').u32(9).u32(1).u8(b'N').u16(0).bytes();
    // Outside a block the xid would be read as the relation id and the rest fail.
    assert!(d.decode(insert_with_xid.clone()).is_err());
    d.decode(W::tag(b'S').u32(9).u8(0).bytes()).unwrap();
    assert!(d.in_stream());
    assert_eq!(
        d.decode(insert_with_xid),
        Ok(PgOutputMessage::Insert {
            xid: Some(9),
            relation_id: 1,
            new: TupleData::default(),
        })
    );
    assert!(d.decode(W::tag(b'S').u32(9).u8(0).bytes()).is_err());
    d.decode(W::tag(b'E').bytes()).unwrap();
    assert!(!d.in_stream());
    assert!(d.decode(W::tag(b'E').bytes()).is_err());
}

#[test]
fn random_corruption_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let samples = samples();
    for _ in 0..20_000 {
        let (bytes, in_stream, _) = &samples[rng.gen_range(0..samples.len())];
        let mut b = bytes.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..3) {
                0 if !b.is_empty() => {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
                1 if !b.is_empty() => b.truncate(rng.gen_range(0..b.len())),
                _ => b.push(rng.gen()),
            }
        }
        let _ = decode(Bytes::from(b), *in_stream);
    }
}

#[test]
fn decode_errors_become_internal_source_errors() {
    let e: SourceError = DecodeError::Empty.into();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert_eq!(e.sqlstate, "XX000");
}
