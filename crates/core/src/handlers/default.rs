//! `$default`: any frame no other route takes. Like the original DefaultHandler, it tells the
//! caller how to use `sendmessage` and shows its connection info.

use super::{HandlerError, Session};
use crate::ports::Outbox;
use crate::protocol::{DEFAULT_ROUTE_HINT, Mode, ServerFrame, compat_default_reply};

pub async fn handle(session: &Session, out: &mut dyn Outbox) -> Result<(), HandlerError> {
    let text = match session.mode {
        Mode::Compat => compat_default_reply(&session.info()),
        Mode::V1 => ServerFrame::Info {
            message: format!(
                "{DEFAULT_ROUTE_HINT} Send {{\"action\":\"sendmessage\",\"room\":\"general\",\"data\":\"hello\"}} \
                 after {{\"action\":\"join\",\"room\":\"general\"}}; other actions: leave, history, members."
            ),
            connection: session.info(),
        }
        .to_json(),
    };
    out.send_text(text).await?;
    Ok(())
}
