//! What `chat-server verify` found, whichever store it checked: the counts it saw and the
//! first problems, so that a report reads the same for the embedded store's file and for
//! cluster mode's PostgreSQL database.

/// Problems listed in full; past this many only their number is kept, so that a badly
/// damaged store gives a readable report (and bounded memory).
const MAX_LISTED: usize = 20;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Rooms.
    pub rooms: u64,
    /// Messages.
    pub messages: u64,
    /// `clientMessageId` index rows.
    pub client_ids: u64,
    /// Inbox rows (one per room and participant).
    pub inbox_rows: u64,
    /// Remembered profiles.
    pub profiles: u64,
    /// Erased users.
    pub erased_users: u64,
    /// `changes` rows (one per message changed since format 2).
    pub change_rows: u64,
    /// The first problems found, in the order found.
    pub problems: Vec<String>,
    /// Problems found in all, listed or not.
    pub problem_count: u64,
}

impl Verified {
    /// No problem was found.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    /// Counts a problem, and keeps its text while fewer than [`MAX_LISTED`] are.
    pub(crate) fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(what);
        }
    }
}
