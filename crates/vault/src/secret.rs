//! The plaintext of a secret, as handed out by [`crate::Vault::get`].

use std::fmt;
use zeroize::Zeroizing;

/// A secret value. Its memory is wiped on drop, `Debug` prints `[REDACTED]`, there is no
/// `Display`, and reading it takes an explicit [`SecretValue::expose`], so it cannot end up in a
/// log line or a format string by accident.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> Self {
        SecretValue(Zeroizing::new(value))
    }

    /// The plaintext. Keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        SecretValue::new(value)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new("hunter2-long".into());
        assert_eq!(format!("{v:?}"), "[REDACTED]");
        assert_eq!(format!("{:?}", Some(&v)), "Some([REDACTED])");
        assert_eq!(v.expose(), "hunter2-long");
    }
}
