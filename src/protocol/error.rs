//! Every way a request can be refused, as one typed value.
//!
//! Handlers return [`ChatError`]; the dialects and the HTTP layer turn it into an `ack`
//! reply, an `error` event or a status code in exactly one place each, so a code can never
//! be spelled two ways or mapped to two statuses.

use serde::Serialize;

/// The error codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownEvent,
    InvalidRoom,
    InvalidMessage,
    MessageTooLarge,
    NotFound,
    Forbidden,
    EditWindowClosed,
    MessageDeleted,
    RateLimited,
    TooManyConnections,
    Unauthorized,
    Internal,
    /// A send between two users where one blocks the other.
    Blocked,
    /// A block past `limits.max_blocks_per_user`.
    TooManyBlocks,
}

impl ErrorCode {
    /// Every code, for whatever must list them all (the metrics seed a series per code).
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownEvent,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::NotFound,
        ErrorCode::Forbidden,
        ErrorCode::EditWindowClosed,
        ErrorCode::MessageDeleted,
        ErrorCode::RateLimited,
        ErrorCode::TooManyConnections,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::Blocked,
        ErrorCode::TooManyBlocks,
    ];

    /// The code as it travels on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::EditWindowClosed => "edit_window_closed",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::Blocked => "blocked",
            ErrorCode::TooManyBlocks => "too_many_blocks",
        }
    }

    /// The HTTP status PROTOCOL.md section 5 assigns to the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::UnknownEvent
            | ErrorCode::InvalidRoom
            | ErrorCode::InvalidMessage
            | ErrorCode::MessageTooLarge => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden
            | ErrorCode::Blocked
            | ErrorCode::TooManyBlocks
            | ErrorCode::EditWindowClosed => 403,
            ErrorCode::MessageDeleted => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections => 429,
            ErrorCode::Internal => 500,
        }
    }
}

/// One rejected item of a `message:read` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Position of the item in the request array.
    pub index: usize,
    /// Why it was refused.
    pub code: ErrorCode,
    /// A sentence for humans.
    pub message: String,
}

/// A refusal: a code, a sentence for humans, and the extra fields some codes carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: when a retry can succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// With a partly failed `message:read`: every rejected item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<Rejection>>,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
            retry_after_ms: None,
            rejected: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Unauthorized, message)
    }

    /// A server-side failure. The detail is logged here, once; the client sees a generic
    /// sentence because internals are none of its business.
    pub fn internal(detail: impl std::fmt::Display) -> ChatError {
        tracing::error!(%detail, "internal error");
        ChatError::new(ErrorCode::Internal, "internal server error")
    }

    pub fn rate_limited(retry_after_ms: u64) -> ChatError {
        ChatError {
            retry_after_ms: Some(retry_after_ms),
            ..ChatError::new(ErrorCode::RateLimited, "too many requests; slow down")
        }
    }
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ChatError {}

impl ChatError {
    /// A room id the caller may not use, with the sentence that explains why.
    pub fn room(err: super::room::RoomError, room_id: &str) -> ChatError {
        let code = match err {
            super::room::RoomError::Forbidden => ErrorCode::Forbidden,
            _ => ErrorCode::InvalidRoom,
        };
        ChatError::new(code, err.message(room_id))
    }
}
