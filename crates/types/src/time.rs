//! Timestamps: milliseconds since the Unix epoch, shown as RFC 3339 on the wire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats epoch milliseconds as RFC 3339 with millisecond precision (`2026-11-22T10:00:00.123Z`).
pub fn rfc3339(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The UTC calendar day of `ms`, `YYYY-MM-DD` (usage and budget periods count in UTC days).
pub fn utc_day(ms: Millis) -> String {
    let mut s = rfc3339(ms);
    s.truncate(10);
    s
}

/// Serde helper: epoch milliseconds on the Rust side, RFC 3339 strings on the wire.
pub mod serde_rfc3339 {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::UNIX_EPOCH;

    pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(ms as Millis)
    }

    /// The same for `Option<Millis>`.
    pub mod option {
        use super::Millis;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::super::rfc3339(*ms)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                humantime::parse_rfc3339_weak(&s)
                    .map_err(serde::de::Error::custom)
                    .and_then(|t| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map_err(serde::de::Error::custom)
                    })
                    .map(|d| d.as_millis() as Millis)
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
