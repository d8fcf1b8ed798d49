//! The usage readers on every format, with every token class, split
//! across chunks at every byte offset.

use super::sse::without_null_usage;
use super::*;
use bytes::Bytes;
use molt_config::TokenClasses;

const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n",
    "data: [DONE]\n\n",
);

fn run(stream: &str, kind: StreamKind, strip: bool, piece: usize) -> (SseUsageReader, Vec<u8>) {
    let mut r = SseUsageReader::new(kind, strip);
    let mut out = Vec::new();
    for c in stream.as_bytes().chunks(piece) {
        r.feed(Bytes::copy_from_slice(c), &mut out);
    }
    r.finish(&mut out);
    (r, out.iter().flat_map(|b| b.iter().copied()).collect())
}

#[test]
fn openai_usage_found_at_every_split() {
    for piece in 1..OPENAI_STREAM.len() {
        let (r, out) = run(OPENAI_STREAM, StreamKind::OpenAi, false, piece);
        assert_eq!(r.usage(), Some(TokenUsage::totals(11, 2)), "piece {piece}");
        assert!(r.terminal_seen());
        assert_eq!(out, OPENAI_STREAM.as_bytes());
    }
}

#[test]
fn usage_chunk_is_stripped_exactly_at_every_split() {
    let want = OPENAI_STREAM
        .replace(
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n",
            "",
        )
        .replace(",\"usage\":null", "");
    for piece in 1..OPENAI_STREAM.len() {
        let (r, out) = run(OPENAI_STREAM, StreamKind::OpenAi, true, piece);
        assert_eq!(r.usage(), Some(TokenUsage::totals(11, 2)), "piece {piece}");
        assert_eq!(String::from_utf8(out).unwrap(), want, "piece {piece}");
    }
}

#[test]
fn null_usage_is_not_parsed_but_objects_are() {
    let r = SseUsageReader::new(StreamKind::OpenAi, false);
    assert!(!r.has_usage_object(br#"{"choices":[],"usage":null}"#));
    assert!(!r.has_usage_object(br#"{"usage" : null,"a":1}"#));
    assert!(!r.has_usage_object(br#"{"a":1}"#));
    assert!(r.has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
    // A later non-null usage (Anthropic nests it) is still found.
    assert!(r.has_usage_object(br#"{"usage":null,"message":{"usage":{"input_tokens":3}}}"#));
}

#[test]
fn null_usage_is_removed_with_one_comma() {
    let cases = [
        (r#"data: {"a":1,"usage":null}"#, r#"data: {"a":1}"#),
        (r#"data: {"usage":null,"a":1}"#, r#"data: {"a":1}"#),
        (r#"data: {"usage":null}"#, r#"data: {}"#),
        (r#"data: {"a":1}"#, r#"data: {"a":1}"#),
    ];
    for (input, want) in cases {
        assert_eq!(without_null_usage(Bytes::from(input)), Bytes::from(want));
    }
}

#[test]
fn stripping_forwards_complete_events_immediately() {
    let mut r = SseUsageReader::new(StreamKind::OpenAi, true);
    let mut out = Vec::new();
    r.feed(
        Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""),
        &mut out,
    );
    assert_eq!(out, [Bytes::from_static(b"data: {\"a\":1}\n\n")]);
}

#[test]
fn anthropic_usage_combines_start_and_delta() {
    let stream = concat!(
        "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n",
        "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
    );
    for piece in [1, 7, 64, stream.len()] {
        let (r, _) = run(stream, StreamKind::Anthropic, false, piece);
        let want = TokenUsage {
            classes: TokenClasses {
                cache_read_input: 5,
                ..TokenClasses::default()
            },
            ..TokenUsage::totals(30, 15)
        };
        assert_eq!(r.usage(), Some(want));
        assert!(r.terminal_seen());
    }
}

#[test]
fn responses_usage_from_completed_event() {
    let stream = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13}}}\n\n",
    );
    let (r, _) = run(stream, StreamKind::Responses, false, 10);
    assert_eq!(r.usage(), Some(TokenUsage::totals(9, 4)));
    assert!(r.terminal_seen());
}

#[test]
fn stream_without_terminal_is_noticed() {
    let cut = &OPENAI_STREAM[..60];
    let (r, _) = run(cut, StreamKind::OpenAi, false, 8);
    assert!(!r.terminal_seen());
    assert_eq!(r.usage(), None);
}

#[test]
fn json_usage_reader_copies_only_usage() {
    let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
    for piece in [1, 5, body.len()] {
        let mut r = JsonUsageReader::default();
        for c in body.chunks(piece) {
            r.feed(c);
        }
        assert_eq!(r.finish(), Some(TokenUsage::totals(3, 4)));
    }
    let mut r = JsonUsageReader::default();
    r.feed(b"<html>");
    assert_eq!(r.finish(), None);
}

// === token classes, every format ===

/// Feed `stream` in pieces of every size from 1 byte to whole, and check
/// the usage and that the bytes pass unchanged.
fn usage_at_every_split(stream: &str, kind: StreamKind, want: TokenUsage) {
    for piece in 1..=stream.len() {
        let (r, out) = run(stream, kind, false, piece);
        assert_eq!(r.usage(), Some(want), "piece {piece}");
        assert!(r.terminal_seen(), "piece {piece}");
        assert_eq!(out, stream.as_bytes(), "piece {piece}");
    }
}

fn classes(f: impl FnOnce(&mut TokenClasses)) -> TokenClasses {
    let mut c = TokenClasses::default();
    f(&mut c);
    c
}

#[test]
fn openai_chat_stream_with_every_class() {
    // Cached and audio prompt tokens, reasoning and audio completion
    // tokens: all parts of the totals.
    let stream = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":2000,\"completion_tokens\":700,\"total_tokens\":2700,",
        "\"prompt_tokens_details\":{\"cached_tokens\":1536,\"audio_tokens\":100},",
        "\"completion_tokens_details\":{\"reasoning_tokens\":512,\"audio_tokens\":60,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );
    let want = TokenUsage {
        classes: classes(|c| {
            c.cache_read_input = 1536;
            c.audio_input = 100;
            c.reasoning_output = 512;
            c.audio_output = 60;
        }),
        ..TokenUsage::totals(2000, 700)
    };
    usage_at_every_split(stream, StreamKind::OpenAi, want);
    // Reasoning is part of the output, not counted twice.
    let split = want.by_class();
    assert_eq!(split.get(molt_config::TokenClass::Output), 700 - 512 - 60);
    assert_eq!(split.get(molt_config::TokenClass::Input), 2000 - 1536 - 100);
}

#[test]
fn usage_on_a_chunk_that_still_has_choices_is_read_and_forwarded() {
    // Some servers put the usage on the last content chunk.
    let last = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":32},\"completion_tokens_details\":{\"reasoning_tokens\":4}}}\n\n";
    let stream = format!(
        "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}}}}],\"usage\":null}}\n\n{last}data: [DONE]\n\n"
    );
    let want = TokenUsage {
        classes: classes(|c| {
            c.cache_read_input = 32;
            c.reasoning_output = 4;
        }),
        ..TokenUsage::totals(40, 9)
    };
    usage_at_every_split(&stream, StreamKind::OpenAi, want);
    // Cutting the usage chunk out never cuts content: this chunk stays.
    for piece in 1..=stream.len() {
        let (r, out) = run(&stream, StreamKind::OpenAi, true, piece);
        assert_eq!(r.usage(), Some(want), "piece {piece}");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\"finish_reason\":\"stop\""), "piece {piece}");
        assert!(out.contains("\"cached_tokens\":32"), "piece {piece}");
    }
}

#[test]
fn responses_stream_with_cached_and_reasoning_tokens() {
    let stream = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":1200,",
        "\"input_tokens_details\":{\"cached_tokens\":1024},\"output_tokens\":300,\"output_tokens_details\":{\"reasoning_tokens\":256},\"total_tokens\":1500}}}\n\n",
    );
    let want = TokenUsage {
        classes: classes(|c| {
            c.cache_read_input = 1024;
            c.reasoning_output = 256;
        }),
        ..TokenUsage::totals(1200, 300)
    };
    usage_at_every_split(stream, StreamKind::Responses, want);
}

#[test]
fn anthropic_stream_with_cache_reads_and_writes_by_lifetime() {
    // Anthropic's input_tokens leave the cache out; the totals add it.
    // message_delta repeats the cache figures, final ones (here a larger
    // read), which win over message_start's.
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":20,",
        "\"cache_creation_input_tokens\":3000,\"cache_read_input_tokens\":1000,",
        "\"cache_creation\":{\"ephemeral_5m_input_tokens\":1000,\"ephemeral_1h_input_tokens\":2000},\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},",
        "\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":3000,\"cache_read_input_tokens\":1500,\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let want = TokenUsage {
        classes: classes(|c| {
            c.cache_read_input = 1500;
            c.cache_write_5m_input = 1000;
            c.cache_write_1h_input = 2000;
        }),
        ..TokenUsage::totals(20 + 3000 + 1500, 42)
    };
    usage_at_every_split(stream, StreamKind::Anthropic, want);
}

#[test]
fn an_anthropic_cache_write_without_a_lifetime_is_a_5_minute_one() {
    let body = br#"{"id":"m","type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":500,"cache_read_input_tokens":0,"output_tokens":7}}"#;
    let want = TokenUsage {
        classes: classes(|c| c.cache_write_5m_input = 500),
        ..TokenUsage::totals(510, 7)
    };
    json_usage_at_every_split(body, want);
}

/// Feed a JSON body in pieces of every size and check its usage.
fn json_usage_at_every_split(body: &[u8], want: TokenUsage) {
    for piece in 1..=body.len() {
        let mut r = JsonUsageReader::default();
        for c in body.chunks(piece) {
            r.feed(c);
        }
        assert_eq!(r.finish(), Some(want), "piece {piece}");
    }
}

#[test]
fn non_streaming_bodies_of_every_format_carry_their_classes() {
    let cases: [(&[u8], TokenUsage); 3] = [
        (
            br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1100,"completion_tokens":90,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":64,"audio_tokens":0}}}"#,
            TokenUsage {
                classes: classes(|c| {
                    c.cache_read_input = 1024;
                    c.reasoning_output = 64;
                }),
                ..TokenUsage::totals(1100, 90)
            },
        ),
        (
            br#"{"id":"r","object":"response","usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":20},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":10}}}"#,
            TokenUsage {
                classes: classes(|c| {
                    c.cache_read_input = 20;
                    c.reasoning_output = 10;
                }),
                ..TokenUsage::totals(50, 30)
            },
        ),
        (
            br#"{"type":"message","usage":{"input_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":200,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":100},"output_tokens":8}}"#,
            TokenUsage {
                classes: classes(|c| {
                    c.cache_read_input = 200;
                    c.cache_write_1h_input = 100;
                }),
                ..TokenUsage::totals(305, 8)
            },
        ),
    ];
    for (body, want) in cases {
        json_usage_at_every_split(body, want);
    }
}

#[test]
fn realtime_response_done_with_cached_and_audio_tokens() {
    // 1,000 input: 300 text + 700 audio, of which 400 cached (100 text,
    // 300 audio); 500 output: 100 text + 400 audio.
    let t = r#"{"type":"response.done","event_id":"e","response":{"id":"r","status":"completed","output":[{"type":"message","content":[{"type":"text","text":"response.done"}]}],"usage":{"total_tokens":1500,"input_tokens":1000,"output_tokens":500,"input_token_details":{"cached_tokens":400,"text_tokens":300,"audio_tokens":700,"cached_tokens_details":{"text_tokens":100,"audio_tokens":300}},"output_token_details":{"text_tokens":100,"audio_tokens":400}}}}"#;
    let got = realtime_response_done(t).unwrap();
    assert_eq!(
        got,
        TokenUsage {
            classes: classes(|c| {
                c.cache_read_input = 400;
                c.audio_input = 400;
                c.audio_output = 400;
            }),
            ..TokenUsage::totals(1000, 500)
        }
    );
    let split = got.by_class();
    assert_eq!(
        split.get(molt_config::TokenClass::Input),
        200,
        "uncached text"
    );
    assert_eq!(
        split.get(molt_config::TokenClass::Output),
        100,
        "text output"
    );
    assert_eq!(
        realtime_response_done(r#"{"type":"response.text.delta","delta":"response.done"}"#),
        None
    );
    assert_eq!(
        realtime_response_done(r#"{"type":"response.done","response":{"usage":null}}"#),
        None
    );
    // A session sums its responses, class by class.
    let mut session = TokenUsage::default();
    session.add(&got);
    session.add(&got);
    assert_eq!(session.classes.audio_output, 800);
    assert_eq!(session.input, 2000);
}

#[test]
fn a_later_zero_does_not_erase_a_reported_count() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":0,\"output_tokens\":6}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let want = TokenUsage {
        classes: classes(|c| c.cache_read_input = 30),
        ..TokenUsage::totals(42, 6)
    };
    usage_at_every_split(stream, StreamKind::Anthropic, want);
}

/// Found while writing `fuzz/`'s sse_usage target: usage fields whose sum
/// passes `u64::MAX` overflowed: a panic in debug builds, a wrapped (tiny)
/// count in release ones.
#[test]
fn huge_counts_saturate() {
    let max = u64::MAX;
    let stream = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max},\"cache_read_input_tokens\":7,\"output_tokens\":{max}}}}}}}\n\n"
    );
    let (r, _) = run(&stream, StreamKind::Anthropic, false, 16);
    let usage = r.usage().expect("usage read");
    assert_eq!((usage.input, usage.output), (max, max));
    let body = format!(
        r#"{{"usage":{{"prompt_tokens":{max},"input_tokens":1,"completion_tokens":{max},"output_tokens":2}}}}"#
    );
    let mut r = JsonUsageReader::default();
    r.feed(body.as_bytes());
    let usage = r.finish().expect("usage read");
    assert_eq!((usage.input, usage.output), (max, max));
}
