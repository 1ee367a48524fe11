//! Metric names the journal exports, in one place so docs and tests agree.

/// Records appended (counter).
pub const APPENDS_TOTAL: &str = "replaymig_journal_appends_total";
/// Encoded bytes appended (counter).
pub const APPEND_BYTES_TOTAL: &str = "replaymig_journal_append_bytes_total";
/// Time from an append call to its record being durable per the mode (histogram).
pub const APPEND_DURATION_SECONDS: &str = "replaymig_journal_append_duration_seconds";
/// Records per group commit (histogram).
pub const BATCH_RECORDS: &str = "replaymig_journal_batch_records";
/// Last durable LSN (gauge).
pub const LAST_LSN: &str = "replaymig_journal_last_lsn";
/// Oldest LSN still stored (gauge; 0 while empty): how far back a replay
/// or a migration can start.
pub const FIRST_LSN: &str = "replaymig_journal_first_lsn";
/// Bytes the journal occupies on disk (gauge, refreshed at checkpoints).
pub const SIZE_BYTES: &str = "replaymig_journal_size_bytes";
/// Errors by kind (counter, label `kind`); shared with the proxy.
pub const ERRORS_TOTAL: &str = "replaymig_errors_total";
/// Free bytes on the filesystem under the journal, as last measured by
/// the writer (gauge).
pub const FREE_BYTES: &str = "replaymig_journal_free_bytes";
/// The free-space reserve under which appends are refused (gauge).
pub const MIN_FREE_BYTES: &str = "replaymig_journal_min_free_bytes";
/// 1 while the journal refuses appends, by `reason` (`low_space`,
/// `storage_failed`); 0 otherwise (gauge).
pub const REFUSING: &str = "replaymig_journal_refusing";
/// Records refused (nothing written) by `reason` (counter).
pub const REFUSED_RECORDS_TOTAL: &str = "replaymig_journal_refused_records_total";
/// Reopens of a failed storage by `outcome` (`ok`, `failed`) (counter).
pub const REOPENS_TOTAL: &str = "replaymig_journal_reopens_total";
