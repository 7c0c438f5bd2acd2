//! The `key=value,...` part of a spec string, and the documentation tables that drive
//! both `approx hw list` and the "allowed" part of every error message.

use super::SpecError;

/// One key of a hardware kind: its name, default and accepted values, for help text
/// and error messages.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key as written in a spec string.
    pub key: &'static str,
    /// The value used when the key is absent.
    pub default: &'static str,
    /// What the key accepts, in words (also used in error messages).
    pub allowed: &'static str,
    /// What the key means, with units.
    pub summary: &'static str,
}

/// One hardware kind: its name and its keys.
#[derive(Debug, Clone, Copy)]
pub struct KindDoc {
    /// The kind as written before the `:`.
    pub kind: &'static str,
    /// One line on what the kind models.
    pub summary: &'static str,
    /// The keys it takes, in canonical order.
    pub keys: &'static [KeyDoc],
}

impl KindDoc {
    fn key_names(&self) -> String {
        if self.keys.is_empty() {
            return "none".to_string();
        }
        self.keys
            .iter()
            .map(|k| format!("`{}`", k.key))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `key=value` pairs of one spec, checked against its kind's keys. A kind's parser
/// takes the keys it knows with [`KeyValues::take`]; [`KeyValues::finish`] then fails
/// on any key nobody took.
#[derive(Debug)]
pub struct KeyValues {
    doc: &'static KindDoc,
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    /// Splits `a=1,b=2` into pairs; rejects malformed items, duplicate keys and keys the
    /// kind does not have.
    pub fn parse(doc: &'static KindDoc, text: &str) -> Result<Self, SpecError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(SpecError::Malformed {
                    kind: doc.kind.to_string(),
                    item: item.to_string(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            if !doc.keys.iter().any(|k| k.key == key) {
                return Err(SpecError::UnknownKey {
                    kind: doc.kind.to_string(),
                    key: key.to_string(),
                    allowed: doc.key_names(),
                });
            }
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(SpecError::DuplicateKey {
                    kind: doc.kind.to_string(),
                    key: key.to_string(),
                });
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Self { doc, pairs })
    }

    /// Removes `key` and converts its value with `convert` (which returns `None` for a
    /// value it does not accept); an absent key yields `None`.
    pub fn take<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, SpecError> {
        let Some(pos) = self.pairs.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        let (_, value) = self.pairs.remove(pos);
        match convert(&value) {
            Some(v) => Ok(Some(v)),
            None => Err(self.bad_value(key, &value)),
        }
    }

    /// Whether the user wrote `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The error for a value of `key` that is not allowed, with the allowed values from
    /// the kind's documentation.
    pub fn bad_value(&self, key: &str, value: &str) -> SpecError {
        let allowed = self
            .doc
            .keys
            .iter()
            .find(|k| k.key == key)
            .map_or("a documented value", |k| k.allowed);
        SpecError::BadValue {
            kind: self.doc.kind.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    /// The error for a key that does not apply given the other settings.
    pub fn conflict(&self, key: &str, reason: &str) -> SpecError {
        SpecError::Conflict {
            kind: self.doc.kind.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Fails if a key was given that the kind's parser did not take.
    pub fn finish(self) -> Result<(), SpecError> {
        match self.pairs.into_iter().next() {
            None => Ok(()),
            Some((key, _)) => Err(SpecError::UnknownKey {
                kind: self.doc.kind.to_string(),
                key,
                allowed: self.doc.key_names(),
            }),
        }
    }
}
