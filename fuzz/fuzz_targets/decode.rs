//! Fuzzes the frame decoder and the route parser: `ClientFrame::decode` in both modes.
//!
//! `cargo +nightly fuzz run decode` (see fuzz/README.md). Seeds: fuzz/corpus/decode/.

#![no_main]

use dynamowave_core::protocol::{ClientFrame, DecodeError, Mode};
use dynamowave_core::types::MAX_MESSAGE_ID_LEN;
use dynamowave_core::{ChatError, ErrorCode};
use libfuzzer_sys::fuzz_target;

/// The fields the decoder reads: every error message names one of them.
const FIELDS: [&str; 8] = [
    "action", "room", "data", "message", "id", "after", "before", "limit",
];

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8: tungstenite refuses anything else before the decoder sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for mode in [Mode::V1, Mode::Compat] {
        match ClientFrame::decode(text, mode) {
            Ok(frame) => {
                if mode == Mode::Compat {
                    assert!(
                        matches!(
                            frame,
                            ClientFrame::SendMessage { .. } | ClientFrame::Default { .. }
                        ),
                        "compat mode has only sendmessage and $default: {frame:?}"
                    );
                }
                if let ClientFrame::SendMessage { id: Some(id), .. } = &frame {
                    assert!((1..=MAX_MESSAGE_ID_LEN).contains(&id.len()), "{id:?}");
                }
            }
            Err(DecodeError::NotJson(detail)) => {
                assert!(!detail.is_empty());
                let error = ChatError::from(DecodeError::NotJson(detail));
                assert_eq!(error.code, ErrorCode::BadRequest);
            }
            Err(DecodeError::Invalid { error, .. }) => {
                assert_eq!(error.code, ErrorCode::BadRequest);
                assert!(
                    FIELDS.iter().any(|f| error.message.contains(f)),
                    "the message names no field: {}",
                    error.message
                );
            }
        }
    }
});
