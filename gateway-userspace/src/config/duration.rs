//! Durations written as humantime strings (`"10s"`, `"1m 30s"`, `"500ms"`), with bounds. Every
//! interval in the config goes through here, so they all read and fail alike.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DurationError {
    /// Not a humantime duration (no unit, unknown unit, stray characters, ...).
    #[error("{}", syntax_message(.0))]
    Syntax(#[from] humantime::DurationError),
    /// Zero would make a periodic task spin.
    #[error("must be greater than zero")]
    Zero,
    /// Longer than the key allows.
    #[error("must be at most {}", humantime::format_duration(*.0))]
    TooLong(Duration),
}

/// humantime's message, with an example where the message alone ("expected number at 11",
/// whose offset counts bytes into the value) does not show what is wanted.
fn syntax_message(e: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::InvalidCharacter(_) | E::NumberExpected(_) => {
            format!("{e} (write durations like \"10s\", \"1m 30s\" or \"500ms\")")
        }
        _ => e.to_string(),
    }
}

/// Parses a duration in `(0, max]`.
pub(crate) fn parse_bounded(s: &str, max: Duration) -> Result<Duration, DurationError> {
    match parse_up_to(s, max)? {
        d if d.is_zero() => Err(DurationError::Zero),
        d => Ok(d),
    }
}

/// Parses a duration in `[0, max]`, for the rare key where zero means something (an HSTS
/// `max_age` of zero tells browsers to forget the policy, RFC 6797 section 6.1.1).
pub(crate) fn parse_up_to(s: &str, max: Duration) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s)?;
    if d > max {
        Err(DurationError::TooLong(max))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn parses_within_bounds() {
        assert_eq!(parse_bounded("10s", HOUR), Ok(Duration::from_secs(10)));
        assert_eq!(parse_bounded("1m 30s", HOUR), Ok(Duration::from_secs(90)));
        assert_eq!(parse_bounded("500ms", HOUR), Ok(Duration::from_millis(500)));
        assert_eq!(parse_bounded("1h", HOUR), Ok(HOUR));
    }

    #[test]
    fn zero_only_where_asked_for() {
        assert_eq!(parse_up_to("0s", HOUR), Ok(Duration::ZERO));
        assert_eq!(parse_bounded("0s", HOUR), Err(DurationError::Zero));
        assert_eq!(parse_up_to("2h", HOUR), Err(DurationError::TooLong(HOUR)));
    }

    #[test]
    fn refusals_format() {
        let msg = |s| parse_bounded(s, HOUR).expect_err(s).to_string();
        assert_eq!(msg("0s"), "must be greater than zero");
        assert_eq!(msg("61m"), "must be at most 1h");
        assert_eq!(msg("10"), "time unit needed, for example 10sec or 10ms");
        assert_eq!(msg(""), "value was empty");
        assert!(msg("10 parsecs").starts_with("unknown time unit \"parsecs\""));
        assert_eq!(
            msg("10s please"),
            "expected number at 4 (write durations like \"10s\", \"1m 30s\" or \"500ms\")"
        );
    }
}
