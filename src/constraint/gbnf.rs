//! llama.cpp's GBNF grammars read into llguidance's Lark dialect, so that llama-server's
//! `grammar` field means what it means there: `name ::= ...` rules (`root` first to match),
//! quoted strings, `[...]` character classes, `.`, groups, `|`, `*` `+` `?` and `{m,n}`,
//! `#` comments. A rule ends at a line break outside parentheses (or right after `|`).
//! Strings and classes are decoded and written again, so escapes mean what GBNF says.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Most nesting of parentheses read (a grammar is a request's input).
const MAX_DEPTH: usize = 64;

/// The grammar as Lark, or what is wrong with it (with the byte offset).
pub fn gbnf_to_lark(text: &str) -> Result<String, String> {
    let mut reader = Reader {
        chars: text.char_indices().collect(),
        pos: 0,
        depth: 0,
        names: BTreeMap::new(),
    };
    let mut rules = Vec::new();
    loop {
        reader.skip_space(true);
        if reader.at_end() {
            break;
        }
        let name = reader.name()?;
        reader.skip_space(false);
        if !reader.eat_str("::=") {
            return Err(reader.error("expected `::=` after a rule name"));
        }
        let body = reader.alternates()?;
        rules.push(format!("{}: {body}", reader.rule_name(&name)?));
    }
    if !reader.names.contains_key("root") {
        return Err("the grammar has no `root` rule".into());
    }
    Ok(rules.join("\n"))
}

struct Reader {
    chars: Vec<(usize, char)>,
    pos: usize,
    depth: usize,
    /// GBNF rule names and the Lark names they became.
    names: BTreeMap<String, String>,
}

impl Reader {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }

    fn error(&self, what: &str) -> String {
        let at = self.chars.get(self.pos).map_or_else(|| self.chars.len(), |&(i, _)| i);
        format!("{what} at byte {at}")
    }

    fn eat_str(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let ahead: String = self.chars.iter().skip(self.pos).take(n).map(|&(_, c)| c).collect();
        if ahead == s {
            self.pos += n;
            return true;
        }
        false
    }

    /// Skips blanks and comments; line breaks too when `newlines`.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                '\n' | '\r' if !newlines => return,
                c if c.is_whitespace() => self.pos += 1,
                _ => return,
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.pos += 1;
        }
        match self.pos > start {
            true => Ok(self.chars[start..self.pos].iter().map(|&(_, c)| c).collect()),
            false => Err(self.error("expected a rule name")),
        }
    }

    /// The Lark name of GBNF rule `name` (`root` is `start`); two names that would meet
    /// are an error.
    fn rule_name(&mut self, name: &str) -> Result<String, String> {
        if let Some(lark) = self.names.get(name) {
            return Ok(lark.clone());
        }
        let lark = match name {
            "root" => "start".to_string(),
            _ => format!("r_{}", name.to_ascii_lowercase().replace('-', "_")),
        };
        if self.names.values().any(|l| *l == lark) {
            return Err(format!(
                "rule names that differ only in case or `-`/`_` are not supported: `{name}`"
            ));
        }
        self.names.insert(name.to_string(), lark.clone());
        Ok(lark)
    }

    fn alternates(&mut self) -> Result<String, String> {
        let mut out = self.sequence()?;
        while self.peek() == Some('|') {
            self.pos += 1;
            self.skip_space(true);
            out.push_str(" | ");
            out.push_str(&self.sequence()?);
        }
        Ok(out)
    }

    fn sequence(&mut self) -> Result<String, String> {
        let mut items = Vec::new();
        loop {
            self.skip_space(self.depth > 0);
            match self.peek() {
                None | Some('|' | ')' | '\n' | '\r') => break,
                Some(_) => {}
            }
            let item = self.item()?;
            items.push(self.postfix(item)?);
        }
        match items.is_empty() {
            true => Ok("\"\"".into()),
            false => Ok(items.join(" ")),
        }
    }

    fn item(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('"') => {
                self.pos += 1;
                let text = self.string()?;
                serde_json::to_string(&text).map_err(|e| e.to_string())
            }
            Some('[') => {
                self.pos += 1;
                self.class()
            }
            Some('.') => {
                self.pos += 1;
                Ok("/(?s:.)/".into())
            }
            Some('(') => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error(&format!("more than {MAX_DEPTH} nested groups")));
                }
                self.skip_space(true);
                let inner = self.alternates()?;
                self.skip_space(true);
                if self.next() != Some(')') {
                    return Err(self.error("expected `)`"));
                }
                self.depth -= 1;
                Ok(format!("({inner})"))
            }
            _ => {
                let name = self.name()?;
                self.rule_name(&name)
            }
        }
    }

    fn postfix(&mut self, item: String) -> Result<String, String> {
        match self.peek() {
            Some(c @ ('*' | '+' | '?')) => {
                self.pos += 1;
                Ok(format!("{item}{c}"))
            }
            Some('{') => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != '}') {
                    self.pos += 1;
                }
                if self.next() != Some('}') {
                    return Err(self.error("expected `}`"));
                }
                let inner: String = self.chars[start + 1..self.pos - 1].iter().map(|&(_, c)| c).collect();
                let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
                if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_digit() || c == ',') {
                    return Err(self.error("a repetition is `{m}`, `{m,}` or `{m,n}`"));
                }
                Ok(format!("{item}{{{inner}}}"))
            }
            _ => Ok(item),
        }
    }

    /// One escaped character after `\`.
    fn escape(&mut self) -> Result<char, String> {
        let hex = |r: &mut Self, n: usize| -> Result<char, String> {
            let digits: String = (0..n).filter_map(|_| r.next()).collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| r.error("bad escape"))
        };
        match self.next() {
            Some('n') => Ok('\n'),
            Some('r') => Ok('\r'),
            Some('t') => Ok('\t'),
            Some('x') => hex(self, 2),
            Some('u') => hex(self, 4),
            Some('U') => hex(self, 8),
            Some(c @ ('\\' | '"' | '[' | ']' | '-' | '^')) => Ok(c),
            _ => Err(self.error("unknown escape")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let mut text = String::new();
        loop {
            match self.next() {
                None => return Err(self.error("unterminated string")),
                Some('"') => return Ok(text),
                Some('\\') => text.push(self.escape()?),
                Some(c) => text.push(c),
            }
        }
    }

    /// A character class, as a regular expression with every character written as `\x{..}`
    /// unless it is alphanumeric.
    fn class(&mut self) -> Result<String, String> {
        let mut out = String::from("/[");
        if self.peek() == Some('^') {
            self.pos += 1;
            out.push('^');
        }
        loop {
            let c = match self.next() {
                None => return Err(self.error("unterminated character class")),
                Some(']') => break,
                Some('\\') => self.escape()?,
                Some(c) => c,
            };
            push_class_char(&mut out, c);
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&(_, c)| c != ']') {
                self.pos += 1;
                let end = match self.next() {
                    Some('\\') => self.escape()?,
                    Some(c) => c,
                    None => return Err(self.error("unterminated character class")),
                };
                out.push('-');
                push_class_char(&mut out, end);
            }
        }
        out.push_str("]/");
        Ok(out)
    }
}

fn push_class_char(out: &mut String, c: char) {
    match c.is_ascii_alphanumeric() {
        true => out.push(c),
        false => {
            let _ = write!(out, "\\x{{{:x}}}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_gbnf() {
        let lark = gbnf_to_lark(
            "# answer\nroot ::= answer (\" \" answer)*\nanswer ::= \"yes\" | \"no\" |\n  [0-9]{1,3} # digits\n",
        )
        .unwrap();
        assert_eq!(
            lark,
            "start: r_answer (\" \" r_answer)*\nr_answer: \"yes\" | \"no\" | /[0-9]/{1,3}"
        );
        let lark = gbnf_to_lark("root ::= [^\"\\n] \"\\x41\" .").unwrap();
        assert_eq!(lark, "start: /[^\\x{22}\\x{a}]/ \"A\" /(?s:.)/");
        let lark = gbnf_to_lark("root ::= (\n  \"a\"\n  | \"b\"\n)+").unwrap();
        assert_eq!(lark, "start: (\"a\" | \"b\")+");
    }

    #[test]
    fn bad_grammars_say_where() {
        for (text, needle) in [
            ("root = \"a\"", "expected `::=`"),
            ("root ::= \"a", "unterminated string"),
            ("root ::= (\"a\"", "expected `)`"),
            ("other ::= \"a\"", "no `root` rule"),
            ("root ::= \"a\"{x}", "repetition"),
        ] {
            let e = gbnf_to_lark(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(gbnf_to_lark(&deep).unwrap_err().contains("nested"));
    }

    #[test]
    fn mutated_grammars_never_panic() {
        use rand::{Rng, SeedableRng};
        let seed = "root ::= item (\",\" item)* # list\nitem ::= [a-z\\-]{1,3} | \"\\x41\" | ( \"b\" | . )?\n";
        let pieces = [
            "(", ")", "[", "]", "{", "}", "\"", "\\", "::=", "|", "*", "{1,", "#", "\n", "^", "-", "é",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(28);
        for _ in 0..50_000 {
            let mut text: Vec<char> = seed.chars().collect();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=text.len());
                match rng.random_range(0..2) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    _ => {
                        let piece = pieces[rng.random_range(0..pieces.len())];
                        text.splice(at..at, piece.chars());
                    }
                }
            }
            let _ = gbnf_to_lark(&text.iter().collect::<String>());
        }
    }
}
