//! The one type for "what changed in the reply text", from the frame parser to the wire.
//!
//! The site sends the whole reply so far in every update; readers want only what changed.
//! A [`Chunk`] is either text to append or text that replaces everything sent so far (the
//! site rewrote earlier text). The parser produces chunks, the engine merges them for slow
//! readers ([`Chunk::merge`]), and the front doors turn them into `delta` / `replace` events.

/// A change of the reply text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Text to append to what the reader has.
    Append(String),
    /// Text that replaces everything the reader has.
    Replace(String),
}

impl Chunk {
    /// The change between the text a reader has (`before`) and the site's new cumulative
    /// text (`after`); `None` when nothing changed.
    pub fn between(before: &str, after: &str) -> Option<Chunk> {
        match after.strip_prefix(before) {
            Some("") => None,
            Some(rest) => Some(Chunk::Append(rest.to_owned())),
            None => Some(Chunk::Replace(after.to_owned())),
        }
    }

    /// One chunk with the effect of `self` followed by `next`: appends concatenate, and a
    /// replace wins over whatever came before it.
    pub fn merge(self, next: Chunk) -> Chunk {
        match (self, next) {
            (_, Chunk::Replace(t)) => Chunk::Replace(t),
            (Chunk::Append(mut s), Chunk::Append(d)) => {
                s.push_str(&d);
                Chunk::Append(s)
            }
            (Chunk::Replace(mut s), Chunk::Append(d)) => {
                s.push_str(&d);
                Chunk::Replace(s)
            }
        }
    }

    /// Applies the chunk to a reader's text.
    pub fn apply(&self, text: &mut String) {
        match self {
            Chunk::Append(s) => text.push_str(s),
            Chunk::Replace(s) => s.clone_into(text),
        }
    }

    /// The chunk's text.
    pub fn text(&self) -> &str {
        match self {
            Chunk::Append(s) | Chunk::Replace(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_gives_appends_for_prefixes_and_replaces_for_rewrites() {
        assert_eq!(Chunk::between("", "He"), Some(Chunk::Append("He".into())));
        assert_eq!(
            Chunk::between("He", "Hello"),
            Some(Chunk::Append("llo".into()))
        );
        assert_eq!(Chunk::between("Hello", "Hello"), None);
        assert_eq!(
            Chunk::between("Hello **wor", "Hello world"),
            Some(Chunk::Replace("Hello world".into()))
        );
    }

    #[test]
    fn merged_chunks_have_the_effect_of_both_in_order() {
        let cases = [
            vec![Chunk::Append("a".into()), Chunk::Append("b".into())],
            vec![Chunk::Append("a".into()), Chunk::Replace("X".into())],
            vec![Chunk::Replace("X".into()), Chunk::Append("y".into())],
            vec![
                Chunk::Append("a".into()),
                Chunk::Replace("X".into()),
                Chunk::Append("y".into()),
                Chunk::Append("z".into()),
            ],
        ];
        for chunks in cases {
            for start in ["", "pre"] {
                let mut one_by_one = start.to_owned();
                chunks.iter().for_each(|c| c.apply(&mut one_by_one));
                let merged = chunks
                    .iter()
                    .cloned()
                    .reduce(Chunk::merge)
                    .expect("non-empty");
                let mut at_once = start.to_owned();
                merged.apply(&mut at_once);
                assert_eq!(one_by_one, at_once, "{chunks:?} from {start:?}");
            }
        }
    }
}
