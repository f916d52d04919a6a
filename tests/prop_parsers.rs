//! Hostile input, measured: generated inputs for every parser that reads bytes someone else
//! wrote. The site's update frames (`parse_frame` and the reply tracker), the IPC request
//! line (`read_line_capped`, `parse_request`), cookie files (`cookies::parse`) and HTTP chat
//! bodies (`http::read_body`, `http::parse_chat_body`).
//!
//! Inputs are built in three ways: shaped like the real thing (so they get past the first
//! `{` into every branch), the same with random byte edits (truncation, insertion, flipped
//! bytes, invalid UTF-8), and arbitrary text. Every case checks: no panic, the error kind
//! where there is one, a property of the result, and the memory the parser allocated at its
//! peak, measured by a counting allocator, against a bound linear in the input. The counts
//! and the worst memory ratio are printed (`-- --nocapture`); docs/SECURITY.md records them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use poed::error::ErrorKind;
use poed::protocol::{parse_request, read_line_capped, LineRead, RequestLine, REQUEST_TYPES};
use poed::reply::Chunk;
use poed::site::poe::frames::{parse_frame, Outcome, ReplyStep, ReplyTracker, Update};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Map, Number, Value};

// ---------------------------------------------------------------------------------------
// Memory: a counting allocator, per thread (tests run on several threads at once).

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n as i64;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - n as i64));
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most memory it held at once beyond what was
/// live before (its result included).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

/// Allowed peak: this many bytes per input byte, plus a fixed allowance for small inputs.
const BYTES_PER_INPUT_BYTE: usize = 64;
const FIXED_ALLOWANCE: usize = 64 * 1024;

/// What one parser saw: cases run, and the worst memory observed.
struct Tally {
    name: &'static str,
    cases: AtomicUsize,
    input_bytes: AtomicUsize,
    /// Worst `peak / input length` among inputs of at least 256 bytes, times 100.
    worst_ratio_x100: AtomicUsize,
    worst_peak: AtomicUsize,
}

impl Tally {
    const fn new(name: &'static str) -> Tally {
        Tally {
            name,
            cases: AtomicUsize::new(0),
            input_bytes: AtomicUsize::new(0),
            worst_ratio_x100: AtomicUsize::new(0),
            worst_peak: AtomicUsize::new(0),
        }
    }

    /// Records a case and checks the memory bound.
    fn case(&self, input_len: usize, peak: usize) -> Result<(), TestCaseError> {
        self.cases.fetch_add(1, Ordering::Relaxed);
        self.input_bytes.fetch_add(input_len, Ordering::Relaxed);
        self.worst_peak.fetch_max(peak, Ordering::Relaxed);
        if input_len >= 256 {
            self.worst_ratio_x100
                .fetch_max(peak * 100 / input_len, Ordering::Relaxed);
        }
        let bound = BYTES_PER_INPUT_BYTE * input_len + FIXED_ALLOWANCE;
        prop_assert!(
            peak <= bound,
            "{}: {peak} bytes at peak for {input_len} input bytes (bound {bound})",
            self.name
        );
        Ok(())
    }

    fn report(&self) {
        let ratio = self.worst_ratio_x100.load(Ordering::Relaxed);
        println!(
            "{}: {} cases, {} input bytes, panics 0, worst peak {} bytes, worst peak/input {}.{:02}",
            self.name,
            self.cases.load(Ordering::Relaxed),
            self.input_bytes.load(Ordering::Relaxed),
            self.worst_peak.load(Ordering::Relaxed),
            ratio / 100,
            ratio % 100
        );
    }
}

/// A runner for `cases` cases. The seed is fixed so CI runs are repeatable; set
/// `PROPTEST_RNG_SEED` to another number to explore other inputs.
fn runner(cases: u32) -> TestRunner {
    let defaults = Config::default();
    let rng_seed = match defaults.rng_seed {
        RngSeed::Random => RngSeed::Fixed(0x706f_6564),
        chosen => chosen,
    };
    TestRunner::new(Config {
        cases,
        rng_seed,
        // Keep shrinking short so a failure reports quickly.
        max_shrink_iters: 2048,
        failure_persistence: None,
        ..defaults
    })
}

// ---------------------------------------------------------------------------------------
// Generators shared by the parsers.

/// Characters that break parsers: quotes, backslashes, brackets, separators, controls,
/// multi-byte and special Unicode, next to plain letters.
const ALPHABET: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', ' ', '-', '_', '.', '/', '"', '\\', '{', '}', '[', ']', ':',
    ',', '\t', '\r', '\n', '#', '\0', '\u{1f}', '\u{7f}', 'é', '€', '😀', '\u{2028}', '\u{feff}',
    '\u{fffd}', 'ß', '\u{301}',
];

/// Any short text drawn from [`ALPHABET`] (cheaper than regex strategies, which matters at
/// 100 000 cases in a debug build).
fn text() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..12)
        .prop_map(|chars| chars.into_iter().collect())
}

/// A JSON number of every kind serde_json produces: small, huge, negative, fractional.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
}

/// A JSON scalar.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value whose object keys are often `keys`, nested a few levels.
fn value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(keys), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    if keys.is_empty() {
        return text().boxed();
    }
    prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// An object with each of `fields` present most of the time, and maybe an extra key.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let names: Vec<&'static str> = fields.iter().map(|(n, _)| *n).collect();
    let values: Vec<BoxedStrategy<Option<Value>>> = fields
        .into_iter()
        .map(|(_, s)| prop::option::weighted(0.85, s).boxed())
        .collect();
    (
        values,
        prop::collection::btree_map(text(), value(&[]), 0..2),
    )
        .prop_map(move |(vals, extra)| {
            let mut map: Map<String, Value> = extra.into_iter().collect();
            for (name, v) in names.iter().zip(vals) {
                if let Some(v) = v {
                    map.insert((*name).to_owned(), v);
                }
            }
            Value::Object(map)
        })
        .boxed()
}

/// One random edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(prop::sample::Index),
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, Vec<u8>),
    Flip(prop::sample::Index, u8),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| Edit::Delete(i, n)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(&b"{}[]\",:\\\n\t\xff\xc3\x80"[..])
                ],
                1..6
            )
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: &prop::sample::Index| i.index(bytes.len() + 1);
        match e {
            Edit::Truncate(i) => bytes.truncate(at(i)),
            Edit::Delete(i, n) => {
                let s = at(i).min(bytes.len());
                let end = (s + n).min(bytes.len());
                bytes.drain(s..end);
            }
            Edit::Insert(i, b) => {
                let s = at(i);
                bytes.splice(s..s, b.iter().copied());
            }
            Edit::Flip(i, b) => {
                if !bytes.is_empty() {
                    let s = i.index(bytes.len());
                    bytes[s] ^= b | 1;
                }
            }
        }
    }
    bytes
}

/// Bytes from a shaped input: as is, edited, or replaced by arbitrary bytes.
fn hostile(shaped: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        5 => shaped.clone(),
        4 => (shaped, edits()).prop_map(|(b, e)| apply(b, &e)),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
    .boxed()
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

fn select(options: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::sample::select(options).prop_map(Value::from).boxed()
}

fn string() -> BoxedStrategy<Value> {
    text().prop_map(Value::String).boxed()
}

/// Outcome of a `TestRunner`: a failure panics with proptest's minimal case.
fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    if let Err(e) = runner(cases).run(&strategy, test) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// The site's update frames.

const FRAME_KEYS: &[&str] = &[
    "messages",
    "message_type",
    "payload",
    "subscription_name",
    "data",
    "messageAdded",
    "messageId",
    "author",
    "text",
    "state",
    "error",
];

fn message_added() -> BoxedStrategy<Value> {
    object(vec![
        (
            "messageId",
            prop_oneof![4 => (1i64..4).prop_map(Value::from), 1 => number(), 1 => string()]
                .boxed(),
        ),
        (
            "author",
            prop_oneof![3 => select(&["human", "chat_break", "beaver", "acouchy"]), 1 => string(), 1 => number()]
                .boxed(),
        ),
        ("text", prop_oneof![4 => string(), 1 => value(&[])].boxed()),
        (
            "state",
            prop_oneof![
                3 => select(&["incomplete", "complete", "cancelled", "error_user_message_too_long"]),
                1 => string(),
                1 => value(&[]),
            ]
            .boxed(),
        ),
    ])
}

fn inner_update() -> BoxedStrategy<Value> {
    let data = object(vec![(
        "messageAdded",
        prop_oneof![3 => message_added(), 1 => value(FRAME_KEYS)].boxed(),
    )]);
    let payload = object(vec![
        (
            "subscription_name",
            prop_oneof![3 => select(&["messageAdded", "viewerStateUpdated", "messageCreated"]), 1 => value(FRAME_KEYS)]
                .boxed(),
        ),
        ("unique_id", string()),
        ("data", prop_oneof![4 => data, 1 => value(FRAME_KEYS)].boxed()),
    ]);
    object(vec![
        (
            "message_type",
            prop_oneof![3 => select(&["subscriptionUpdate", "refetchChannel"]), 1 => value(&[])]
                .boxed(),
        ),
        (
            "payload",
            prop_oneof![4 => payload, 1 => value(FRAME_KEYS)].boxed(),
        ),
    ])
}

fn frame_bytes() -> BoxedStrategy<Vec<u8>> {
    let entry = prop_oneof![
        4 => inner_update().prop_map(|v| Value::String(v.to_string())),
        1 => inner_update(),
        1 => value(FRAME_KEYS),
    ];
    let outer = object(vec![
        (
            "messages",
            prop_oneof![5 => prop::collection::vec(entry, 0..4).prop_map(Value::Array), 1 => value(FRAME_KEYS)]
                .boxed(),
        ),
        ("min_seq", number().boxed()),
        (
            "error",
            prop_oneof![Just(Value::from("missed_messages")), value(&[])].boxed(),
        ),
    ]);
    hostile(outer.prop_map(|v| v.to_string().into_bytes()).boxed())
}

static FRAMES: Tally = Tally::new("frame parser (parse_frame + ReplyTracker)");

#[test]
fn frames_never_panic_and_stay_small() {
    check(25_000, frame_bytes(), |bytes| {
        let input = lossy(bytes);
        let (updates, peak) = peak_of(|| parse_frame(&input));
        FRAMES.case(input.len(), peak)?;
        let mut tracker = ReplyTracker::new();
        for u in &updates {
            if let Update::Message(m) = u {
                tracker.feed(m);
            }
        }
        Ok(())
    });
    FRAMES.report();
}

/// Cumulative texts of one bot reply: each either extends the last or rewrites it.
fn reply_texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec((any::<bool>(), text()), 1..10).prop_map(|steps| {
        let mut out: Vec<String> = Vec::new();
        for (extend, t) in steps {
            let next = match (extend, out.last()) {
                (true, Some(last)) => format!("{last}{t}"),
                _ => t,
            };
            out.push(next);
        }
        out
    })
}

fn added(id: i64, author: &str, text: &str, state: &str) -> String {
    let inner = json!({"message_type": "subscriptionUpdate", "payload": {
        "subscription_name": "messageAdded", "unique_id": "messageAdded:1",
        "data": {"messageAdded": {"messageId": id, "author": author, "text": text, "state": state}}}});
    json!({"messages": [inner.to_string()], "min_seq": 1}).to_string()
}

static TRACKER: Tally = Tally::new("reply tracker over parsed frames");

/// Whatever the site's cumulative texts, a reader applying the tracker's chunks ends with
/// exactly the site's last text, and the reply finishes once.
#[test]
fn a_reader_always_ends_with_the_sites_text() {
    let ending = prop::sample::select(
        &[
            "complete",
            "incomplete",
            "error_user_message_too_long",
            "cancelled",
        ][..],
    );
    check(
        10_000,
        (reply_texts(), ending, any::<bool>()),
        |(texts, ending, echo)| {
            let mut frames = Vec::new();
            if echo {
                frames.push(added(1, "human", "the prompt", "complete"));
            }
            for (i, t) in texts.iter().enumerate() {
                let state = if i + 1 == texts.len() {
                    ending
                } else {
                    "incomplete"
                };
                frames.push(added(2, "beaver", t, state));
            }
            // The site repeats the final update (seen in 2025): it must change nothing.
            frames.push(added(
                2,
                "beaver",
                texts.last().map_or("", String::as_str),
                ending,
            ));
            let input_len: usize = frames.iter().map(String::len).sum();
            let ((reader, finished), peak) = peak_of(|| {
                let mut tracker = ReplyTracker::new();
                let mut reader = String::new();
                let mut finished = Vec::new();
                for f in &frames {
                    for u in parse_frame(f) {
                        let Update::Message(m) = u else { continue };
                        for step in tracker.feed(&m) {
                            match step {
                                ReplyStep::Text(chunk) => chunk.apply(&mut reader),
                                ReplyStep::Finished(o) => finished.push(o),
                            }
                        }
                    }
                }
                (reader, finished)
            });
            TRACKER.case(input_len, peak)?;
            if !echo {
                // No prompt's echo, no reply: the messages may be any chat's.
                prop_assert_eq!(&reader, "");
                prop_assert!(finished.is_empty());
                return Ok(());
            }
            let last = texts.last().cloned().unwrap_or_default();
            prop_assert_eq!(&reader, &last);
            match ending {
                "incomplete" => prop_assert!(finished.is_empty()),
                "complete" => prop_assert_eq!(finished, vec![Outcome::Complete(last)]),
                state => prop_assert_eq!(
                    finished,
                    vec![Outcome::Failed {
                        state: state.to_owned(),
                        text: last
                    }]
                ),
            }
            Ok(())
        },
    );
    TRACKER.report();
    // The chunk type itself: merging then applying equals applying one by one.
    let mut a = String::from("ab");
    Chunk::Append("c".into())
        .merge(Chunk::Replace("x".into()))
        .apply(&mut a);
    assert_eq!(a, "x");
}

// ---------------------------------------------------------------------------------------
// The IPC request line.

fn request_bytes() -> BoxedStrategy<Vec<u8>> {
    let id = || prop_oneof![3 => number(), 3 => string(), 1 => value(&[])].boxed();
    let message = object(vec![
        (
            "role",
            prop_oneof![select(&["user", "system", "assistant"]), string()].boxed(),
        ),
        (
            "content",
            prop_oneof![4 => string(), 1 => value(&[])].boxed(),
        ),
    ]);
    let cookie = object(vec![
        ("name", string()),
        ("value", string()),
        (
            "domain",
            prop_oneof![select(&[".poe.com", "poe.com"]), string()].boxed(),
        ),
        ("path", string()),
        (
            "secure",
            prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed(),
        ),
        ("http_only", any::<bool>().prop_map(Value::Bool).boxed()),
        ("expires", number().boxed()),
        (
            "same_site",
            prop_oneof![select(&["Strict", "Lax", "None"]), string()].boxed(),
        ),
    ]);
    let request = object(vec![
        ("id", id()),
        (
            "type",
            prop_oneof![4 => select(&REQUEST_TYPES), 1 => string(), 1 => value(&[])].boxed(),
        ),
        ("model", prop_oneof![string(), value(&[])].boxed()),
        (
            "messages",
            prop_oneof![4 => prop::collection::vec(message, 0..3).prop_map(Value::Array), 1 => value(&[])]
                .boxed(),
        ),
        ("stream", prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed()),
        ("target", id()),
        (
            "cookies",
            prop_oneof![3 => prop::collection::vec(cookie, 0..2).prop_map(Value::Array), 1 => value(&[])]
                .boxed(),
        ),
        ("timeout_secs", prop_oneof![number(), value(&[])].boxed()),
    ]);
    hostile(request.prop_map(|v| v.to_string().into_bytes()).boxed())
}

static REQUESTS: Tally = Tally::new("IPC request parser (parse_request)");

/// Any line: a request that round-trips through its wire shape, or `bad_request`.
#[test]
fn request_lines_parse_or_are_bad_requests() {
    check(25_000, request_bytes(), |line| {
        let (parsed, peak) = peak_of(|| parse_request(&line));
        REQUESTS.case(line.len(), peak)?;
        match parsed {
            Ok(req) => {
                let wire =
                    serde_json::to_vec(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let again: RequestLine = parse_request(&wire).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{:?} did not parse again: {e:?}",
                        String::from_utf8_lossy(&wire)
                    ))
                })?;
                // serde_json reads floats fast rather than correctly rounded: a number may
                // come back one unit in the last place off.
                let (a, b) = (json!(again), json!(req));
                prop_assert!(same_json(&a, &b), "{a} != {b}");
            }
            Err(e) => prop_assert_eq!(e.error.kind, ErrorKind::BadRequest),
        }
        Ok(())
    });
    REQUESTS.report();
}

/// Equal JSON, numbers within a relative 1e-15 (one or two units in the last place).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// What `read_line_capped` must return for `input` under `max`: each line without its
/// newline (and one `\r`), or `TooLong` when the line with its newline is over the cap.
fn lines_model(input: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default();
    for p in pieces {
        out.push((p.len() < max).then(|| p.strip_suffix(b"\r").unwrap_or(p).to_vec()));
    }
    if !last.is_empty() {
        out.push((last.len() < max).then(|| last.to_vec()));
    }
    out
}

static LINES: Tally = Tally::new("IPC line reader (read_line_capped)");

#[test]
fn the_line_reader_never_holds_more_than_its_cap() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let segment = prop_oneof![
        3 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..300),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"\r\n".to_vec()),
    ];
    let input = prop::collection::vec(segment, 0..12).prop_map(|s| s.concat());
    check(
        5_000,
        (input, 16usize..256, 1usize..64),
        |(input, max, capacity)| {
            let (got, peak) = peak_of(|| {
                rt.block_on(async {
                    let mut reader = tokio::io::BufReader::with_capacity(capacity, &input[..]);
                    let mut buf = Vec::new();
                    let mut got = Vec::new();
                    loop {
                        match read_line_capped(&mut reader, &mut buf, max).await {
                            Ok(LineRead::Line) => got.push(Some(buf.clone())),
                            Ok(LineRead::TooLong) => got.push(None),
                            Ok(LineRead::Eof) => return Ok(got),
                            Err(e) => return Err(e.to_string()),
                        }
                        if buf.len() >= max {
                            return Err(format!("held {} bytes with a cap of {max}", buf.len()));
                        }
                    }
                })
            });
            // The reader holds at most its cap plus its own buffer, whatever the input's length.
            LINES.case(max + capacity, peak.saturating_sub(input.len()))?;
            let got = got.map_err(TestCaseError::fail)?;
            prop_assert_eq!(got, lines_model(&input, max));
            Ok(())
        },
    );
    LINES.report();
}

// ---------------------------------------------------------------------------------------
// Cookie files.

fn cookie_json_bytes() -> BoxedStrategy<Vec<u8>> {
    let cookie = object(vec![
        (
            "name",
            prop_oneof![4 => select(&["p-b", "p-lat"]), 2 => string(), 1 => value(&[])].boxed(),
        ),
        ("value", prop_oneof![4 => string(), 1 => value(&[])].boxed()),
        (
            "domain",
            prop_oneof![4 => select(&[".poe.com", "poe.com"]), 1 => value(&[])].boxed(),
        ),
        ("path", prop_oneof![string(), value(&[])].boxed()),
        (
            "secure",
            prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed(),
        ),
        (
            "httpOnly",
            prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed(),
        ),
        ("expirationDate", prop_oneof![number(), value(&[])].boxed()),
        ("expires", prop_oneof![number(), string()].boxed()),
        (
            "session",
            prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed(),
        ),
        (
            "sameSite",
            prop_oneof![
                3 => select(&["strict", "Lax", "no_restriction", "unspecified", "none", ""]),
                1 => string(),
                1 => value(&[]),
            ]
            .boxed(),
        ),
    ]);
    let list = prop::collection::vec(cookie, 0..5).prop_map(Value::Array);
    let file = prop_oneof![
        4 => list.clone(),
        1 => list.prop_map(|l| json!({"cookies": l})),
        1 => value(&["cookies", "name", "value", "domain"]),
    ];
    let text = (file, any::<bool>()).prop_map(|(v, pretty)| {
        if pretty {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            v.to_string()
        }
    });
    hostile(text.prop_map(String::into_bytes).boxed())
}

fn cookies_txt_bytes() -> BoxedStrategy<Vec<u8>> {
    let flag = || prop_oneof![4 => prop::sample::select(&["TRUE", "FALSE", "true"][..]).prop_map(str::to_owned), 1 => text()];
    let expiry = prop_oneof![
        3 => any::<u32>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => text(),
    ];
    let fields = (
        prop_oneof![
            select(&[".poe.com", "poe.com"])
                .prop_map(|v| v.as_str().unwrap_or_default().to_owned()),
            text()
        ],
        flag(),
        text(),
        flag(),
        expiry,
        prop_oneof![Just("p-b".to_owned()), text()],
        text(),
        0usize..3,
    )
        .prop_map(|(d, s, p, sec, e, n, v, drop)| {
            let mut f = vec![d, s, p, sec, e, n, v];
            // Now and then a line with a field too few or too many.
            match drop {
                1 => {
                    f.pop();
                }
                2 => f.push("extra".into()),
                _ => {}
            }
            f.join("\t")
        })
        .boxed();
    let line = prop_oneof![
        6 => fields.clone(),
        2 => fields.prop_map(|l| format!("#HttpOnly_{l}")),
        1 => text().prop_map(|t| format!("# {t}")),
        1 => Just(String::new()),
    ];
    let file = (prop::collection::vec(line, 0..8), any::<bool>())
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }));
    hostile(file.prop_map(String::into_bytes).boxed())
}

static COOKIES: Tally = Tally::new("cookie file parser (JSON and cookies.txt)");

#[test]
fn cookie_files_parse_or_say_why() {
    let files = prop_oneof![cookie_json_bytes(), cookies_txt_bytes()];
    check(25_000, files, |bytes| {
        let text = lossy(bytes);
        let (parsed, peak) = peak_of(|| poed::cookies::parse(&text));
        COOKIES.case(text.len(), peak)?;
        match parsed {
            Ok(cookies) => {
                prop_assert!(!cookies.is_empty());
                prop_assert!(cookies.iter().all(|c| !c.name.is_empty()));
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
        Ok(())
    });
    COOKIES.report();
}

// ---------------------------------------------------------------------------------------
// HTTP chat bodies.

fn chat_body_bytes() -> BoxedStrategy<Vec<u8>> {
    let part = object(vec![
        (
            "type",
            prop_oneof![select(&["text", "image_url"]), string()].boxed(),
        ),
        ("text", prop_oneof![4 => string(), 1 => value(&[])].boxed()),
    ]);
    let message = object(vec![
        (
            "role",
            prop_oneof![4 => select(&["user", "system", "assistant"]), 1 => value(&[])].boxed(),
        ),
        (
            "content",
            prop_oneof![
                4 => string(),
                1 => Just(Value::Null),
                2 => prop::collection::vec(part, 0..3).prop_map(Value::Array),
                1 => value(&["text", "type"]),
            ]
            .boxed(),
        ),
    ]);
    let body = object(vec![
        ("model", prop_oneof![4 => select(&["gpt-4", "gpt-3.5-turbo"]), 1 => value(&[])].boxed()),
        (
            "messages",
            prop_oneof![5 => prop::collection::vec(message, 0..4).prop_map(Value::Array), 1 => value(&[])]
                .boxed(),
        ),
        ("stream", prop_oneof![any::<bool>().prop_map(Value::Bool), value(&[])].boxed()),
        ("temperature", number().boxed()),
    ]);
    hostile(body.prop_map(|v| v.to_string().into_bytes()).boxed())
}

static BODIES: Tally = Tally::new("HTTP chat body parser (parse_chat_body)");

#[test]
fn chat_bodies_parse_or_are_bad_requests() {
    check(25_000, chat_body_bytes(), |body| {
        let (parsed, peak) = peak_of(|| poed::http::parse_chat_body(&body));
        BODIES.case(body.len(), peak)?;
        match parsed {
            Ok(chat) => {
                prop_assert!(std::str::from_utf8(&body).is_ok());
                // A number beyond f64 in an ignored field is skipped like the field itself,
                // while a full JSON tree refuses it: compare only where the tree exists.
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let n = v["messages"].as_array().map(Vec::len);
                    prop_assert_eq!(Some(chat.messages.len()), n);
                }
            }
            Err(e) => prop_assert_eq!(e.kind, ErrorKind::BadRequest),
        }
        Ok(())
    });
    BODIES.report();
}

#[test]
fn bodies_over_the_cap_are_cut_off_whatever_their_chunks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let chunks = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20);
    let runs = AtomicUsize::new(0);
    check(2_000, (chunks, 0usize..2_000), |(chunks, max)| {
        runs.fetch_add(1, Ordering::Relaxed);
        let total: usize = chunks.iter().map(Vec::len).sum();
        let whole = chunks.concat();
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
        );
        let got = rt.block_on(poed::http::read_body(
            axum::body::Body::from_stream(stream),
            max,
        ));
        match got {
            Ok(bytes) => {
                prop_assert!(total <= max);
                prop_assert_eq!(&bytes[..], &whole[..]);
            }
            Err(e) => {
                prop_assert!(total > max);
                prop_assert_eq!(e.kind, ErrorKind::RequestTooLarge);
            }
        }
        Ok(())
    });
    println!(
        "HTTP body reader (read_body): {} cases, panics 0",
        runs.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------
// The extremes, each once: far over any cap, far deeper than any parser recurses, not UTF-8.

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

fn deep_object(n: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
}

#[test]
fn oversized_deep_and_invalid_utf8_inputs_get_their_kinds() {
    let not_utf8: &[u8] = b"{\"id\":1,\"type\":\"complete\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}";
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    // IPC: bad_request for nesting and bad bytes; an oversized line is skipped whole and the
    // next line still parses, with memory under the cap.
    for line in [
        deep(200_000).into_bytes(),
        deep_object(200_000).into_bytes(),
        not_utf8.to_vec(),
        b"\xff\xfe".to_vec(),
    ] {
        let e = parse_request(&line).expect_err("refused");
        assert_eq!(e.error.kind, ErrorKind::BadRequest, "{:?}", e.error);
    }
    let cap = 1 << 20;
    let mut input = vec![b'x'; 16 << 20];
    input.extend_from_slice(b"\n{\"id\":1,\"type\":\"status\"}\n");
    let (reads, peak) = peak_of(|| {
        rt.block_on(async {
            let mut reader = tokio::io::BufReader::new(&input[..]);
            let mut buf = Vec::new();
            let first = read_line_capped(&mut reader, &mut buf, cap)
                .await
                .expect("read");
            let second = read_line_capped(&mut reader, &mut buf, cap)
                .await
                .expect("read");
            (first, second, parse_request(&buf).is_ok())
        })
    });
    assert_eq!(reads, (LineRead::TooLong, LineRead::Line, true));
    assert!(
        peak < 2 * cap + 64 * 1024,
        "{peak} bytes held for a 16 MiB line under a 1 MiB cap"
    );
    println!("IPC: a 16 MiB line under a 1 MiB cap held {peak} bytes at peak");

    // HTTP: bad_request for nesting and bad bytes, request_too_large past the cap.
    for body in [
        deep(200_000).into_bytes(),
        deep_object(200_000).into_bytes(),
        not_utf8.to_vec(),
    ] {
        let e = poed::http::parse_chat_body(&body).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
    }
    let (e, peak) = peak_of(|| {
        let chunks = futures::stream::iter(
            (0..16).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 1 << 20]))),
        );
        rt.block_on(poed::http::read_body(
            axum::body::Body::from_stream(chunks),
            cap,
        ))
    });
    assert_eq!(e.expect_err("too large").kind, ErrorKind::RequestTooLarge);
    assert!(
        peak < 3 * cap + 64 * 1024,
        "{peak} bytes held for a 16 MiB body under a 1 MiB cap"
    );

    // Frames: nothing to report, no crash, also when the nesting hides inside an entry.
    assert!(parse_frame(&deep(200_000)).is_empty());
    let hidden = json!({"messages": [deep_object(200_000)]}).to_string();
    assert!(parse_frame(&hidden).is_empty());
    assert!(parse_frame("\u{fffd}\u{fffd}{").is_empty());
    // A 16 MiB reply text (far beyond what the site sends) parses in linear memory.
    let big = added(2, "beaver", &"é".repeat(8 << 20), "complete");
    let (updates, peak) = peak_of(|| parse_frame(&big));
    assert_eq!(updates.len(), 1);
    assert!(
        peak <= 8 * big.len(),
        "{peak} bytes for a {} byte frame",
        big.len()
    );
    println!(
        "frames: a {} byte frame held {peak} bytes at peak",
        big.len()
    );

    // Cookies: said why.
    for text in [deep(200_000), deep_object(200_000)] {
        let e = poed::cookies::parse(&text).expect_err("refused");
        assert!(
            e.contains("not valid JSON") || e.contains("expected"),
            "{e}"
        );
    }
    let many = "poe.com\tTRUE\t/\tTRUE\t0\tp-b\tv\n".repeat(100_000);
    let (parsed, peak) = peak_of(|| poed::cookies::parse(&many));
    assert_eq!(parsed.expect("valid").len(), 100_000);
    assert!(peak <= BYTES_PER_INPUT_BYTE * many.len(), "{peak}");
}

#[test]
fn the_bound_is_not_vacuous() {
    // The allocator sees what a parser keeps: 1 MiB of text held costs at least 1 MiB.
    let (s, peak) = peak_of(|| "x".repeat(1 << 20));
    assert_eq!(s.len(), 1 << 20);
    assert!(peak >= 1 << 20, "{peak}");
}
