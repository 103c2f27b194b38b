//! Stop strings over streamed text.
//!
//! [`StopMatcher`] sits between the detokenizer and the caller: it holds back any text
//! that could still be the start of a stop string, so streamed output never shows text
//! that a later piece turns into a stop (and has to be cut). Works on `&str`, so it never
//! splits a UTF-8 character.

use crate::error::{Error, Result};

/// What [`StopMatcher::push`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is now safe to emit (possibly empty).
    pub text: String,
    /// True when a stop string completed: `text` is everything before it, and generation
    /// should end (the stop string itself and anything after it are dropped).
    pub stopped: bool,
}

/// Finds the first stop string in a stream of text pieces.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: the longest tail that is a proper prefix of
    /// some stop string.
    held: String,
    stopped: bool,
    /// Which stop string ended the text.
    matched: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; an empty list passes all text through. Empty stop strings
    /// are refused (`InvalidParameter { name: "stop" }`).
    pub fn new(stops: Vec<String>) -> Result<Self> {
        if let Some(i) = stops.iter().position(String::is_empty) {
            return Err(Error::InvalidParameter {
                name: "stop",
                reason: format!("stop string #{i} is empty; stop strings must be non-empty"),
            });
        }
        Ok(Self {
            stops,
            held: String::new(),
            stopped: false,
            matched: None,
        })
    }

    /// True once a stop string has been found (later pushes release nothing).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.and_then(|i| self.stops.get(i)).map(String::as_str)
    }

    /// Adds the next piece of generated text. When a stop string completes, releases the
    /// text before its first occurrence with `stopped = true`; otherwise releases all text
    /// except a tail that could still grow into a stop string.
    pub fn push(&mut self, piece: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        if let Some((at, which)) = self.first_stop() {
            self.held.truncate(at);
            self.stopped = true;
            self.matched = Some(which);
            return StopStep {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep_from = self.partial_start();
        let rest = self.held.split_off(keep_from);
        StopStep {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Releases the held-back text at the end of generation (none after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset of the earliest complete stop string in `held`, and which one it is.
    fn first_stop(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min()
    }

    /// Start of the longest tail of `held` that is a proper prefix of a stop string
    /// (`held.len()` when there is none). A full match was ruled out by `first_stop`.
    fn partial_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let from = self.held.len().saturating_sub(longest.saturating_sub(1));
        (from..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    /// Feeds `pieces`; returns the released texts, whether it stopped, and the flush.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut out = Vec::new();
        for p in pieces {
            let step = m.push(p);
            out.push(step.text);
            if step.stopped {
                return (out, true, m.finish());
            }
        }
        (out, false, m.finish())
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = matcher(&[]);
        assert_eq!(
            run(&mut m, &["a", "bc", ""]),
            (vec!["a".into(), "bc".into(), "".into()], false, "".into())
        );
    }

    #[test]
    fn stop_spanning_pieces_is_held_then_cut() {
        let mut m = matcher(&["</end>"]);
        let (out, stopped, rest) = run(&mut m, &["Hello <", "/e", "nd> tail"]);
        assert_eq!(out, ["Hello ", "", ""]);
        assert!(stopped && rest.is_empty());
    }

    #[test]
    fn false_start_is_released_when_it_diverges() {
        let mut m = matcher(&["STOP"]);
        let (out, stopped, rest) = run(&mut m, &["a ST", "ART", " x S"]);
        assert_eq!(out, ["a ", "START", " x "]);
        assert!(!stopped);
        assert_eq!(rest, "S");
    }

    #[test]
    fn overlapping_candidates_keep_the_right_tail() {
        // "aab" must be found although the first "a" of "aaab" starts a false candidate.
        let mut m = matcher(&["aab"]);
        let (out, stopped, _) = run(&mut m, &["xa", "a", "a", "b!"]);
        assert_eq!(out.concat(), "xa");
        assert!(stopped);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = matcher(&["world", "lo w"]);
        assert_eq!(
            m.push("hello world"),
            StopStep {
                text: "hel".into(),
                stopped: true
            }
        );
        assert_eq!(
            m.push("more"),
            StopStep {
                text: "".into(),
                stopped: true
            }
        );
        let mut m = matcher(&["abcd", "bc"]);
        // "bc" completes first; "abcd" can no longer win.
        assert_eq!(
            m.push("xab"),
            StopStep {
                text: "x".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("c"),
            StopStep {
                text: "a".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let mut m = matcher(&["é!", "日本"]);
        let (out, stopped, rest) = run(&mut m, &["café", " 日", "x 日", "本語"]);
        assert_eq!(out, ["caf", "é ", "日x ", ""]);
        assert!(stopped && rest.is_empty());
        let mut m = matcher(&["🦀🦀"]);
        let (out, stopped, rest) = run(&mut m, &["a🦀", "b🦀"]);
        assert_eq!(out, ["a", "🦀b"]);
        assert!(!stopped);
        assert_eq!(rest, "🦀");
    }

    #[test]
    fn stop_at_the_very_start_and_empty_stop_rejected() {
        let mut m = matcher(&["\n\n"]);
        assert_eq!(
            m.push("\n\nabc"),
            StopStep {
                text: "".into(),
                stopped: true
            }
        );
        let err = StopMatcher::new(vec!["ok".into(), String::new()]).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { name: "stop", .. }));
    }
}
