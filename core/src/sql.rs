//! SQL statement normalisation: one name per statement shape, so the same
//! query with other values is one row in the SQL table.
//!
//! A real tokenizer (not regexes): string and numeric literals become `?`,
//! placeholders (`?`, `:name`, `$1`) become `?`, comments are stripped,
//! whitespace collapses to one space, digits inside identifiers are kept
//! (`table1`, `t2.col3`), quoted identifiers (`` `x` ``, `"x"` in PostgreSQL)
//! are kept, `IN (?, ?, …)` collapses to `IN (?)` and multi-row
//! `VALUES (…), (…)` to the first row. Normalising happens before truncating.
//! Runs at request end, never in a hook.

/// How to read double-quoted text: MySQL treats `"…"` as a string (by
/// default), PostgreSQL and SQLite as an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    MySql,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// A literal or a placeholder: written as `?`.
    Value,
    /// A word: keyword or identifier (kept as written).
    Word,
    /// Punctuation / operator: kept as written.
    Punct,
    /// A quoted identifier: kept as written.
    Ident,
    /// `(` that had whitespace before it in the source: `t (a, b)` keeps the
    /// space, `COUNT(*)` does not.
    OpenSpaced,
}

/// Normalises `sql`; the result is at most `max_len` bytes (cut on a char
/// boundary, with `…` appended when cut).
pub fn normalize(sql: &str, dialect: Dialect, max_len: usize) -> String {
    let mut toks: Vec<(Tok, &str)> = Vec::with_capacity(sql.len() / 3);
    tokenize(sql, dialect, &mut toks);
    let toks = collapse(toks);
    let mut out = String::with_capacity(sql.len().min(max_len + 4));
    let mut prev: Option<(Tok, &str)> = None;
    for (t, s) in toks {
        if let Some(p) = prev {
            if needs_space(p, (t, s)) {
                out.push(' ');
            }
        }
        match t {
            Tok::Value => out.push('?'),
            _ => out.push_str(s),
        }
        prev = Some((t, s));
        if out.len() > max_len {
            break;
        }
    }
    truncate(&mut out, max_len);
    out
}

/// A stable 64-bit hash (FNV-1a) of a normalised statement.
pub fn hash(normalized: &str) -> u64 {
    hash_bytes(normalized.as_bytes())
}

/// FNV-1a of raw bytes (e.g. a statement before normalising).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn truncate(s: &mut String, max_len: usize) {
    if s.len() <= max_len {
        return;
    }
    let mut cut = max_len.saturating_sub('…'.len_utf8());
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}

fn needs_space(prev: (Tok, &str), next: (Tok, &str)) -> bool {
    let word_like = |t: Tok| matches!(t, Tok::Word | Tok::Value | Tok::Ident);
    if next.0 == Tok::OpenSpaced {
        return !matches!(prev.1, "(" | ".");
    }
    if word_like(prev.0) && word_like(next.0) {
        return true;
    }
    match (prev.1, next.1) {
        // No space inside `a.b`, before `,` `)` `;`, after `(`.
        (_, "," | ")" | ";" | "." | "::") | ("(" | "." | "::", _) => false,
        (_, "(") => next.0 == Tok::OpenSpaced || !matches!(prev.0, Tok::Word | Tok::Ident),
        _ => true,
    }
}

fn tokenize<'a>(sql: &'a str, dialect: Dialect, out: &mut Vec<(Tok, &'a str)>) {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            b'#' if dialect == Dialect::MySql => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = match find(b, i + 2, b"*/") {
                    Some(e) => e + 2,
                    None => b.len(),
                };
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'', true);
                out.push((Tok::Value, ""));
            }
            b'"' if dialect == Dialect::MySql => {
                i = skip_quoted(b, i, b'"', true);
                out.push((Tok::Value, ""));
            }
            b'"' | b'`' => {
                let e = skip_quoted(b, i, c, false);
                out.push((Tok::Ident, &sql[i..e]));
                i = e;
            }
            b'$' if dialect == Dialect::Postgres && is_dollar_quote_start(b, i) => {
                i = skip_dollar_quoted(b, i);
                out.push((Tok::Value, ""));
            }
            b'?' => {
                i += 1;
                out.push((Tok::Value, ""));
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push((Tok::Value, ""));
            }
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && !matches!(out.last(), Some((_, ":"))) =>
            {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Value, ""));
            }
            b'0'..=b'9' => {
                i = skip_number(b, i);
                out.push((Tok::Value, ""));
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !matches!(out.last(), Some((Tok::Word | Tok::Ident, _))) =>
            {
                i = skip_number(b, i);
                out.push((Tok::Value, ""));
            }
            // A sign directly before a number, where a value is expected
            // (after an operator, `(`, `,` or at the start), is part of it.
            b'-' | b'+'
                if b.get(i + 1).is_some_and(u8::is_ascii_digit)
                    && matches!(out.last(), None | Some((Tok::Punct, _))) =>
            {
                i = skip_number(b, i + 1);
                out.push((Tok::Value, ""));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let s = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[s..i];
                // x'ABCD', b'0101', N'text', E'text' literals.
                if i < b.len()
                    && b[i] == b'\''
                    && matches!(word, "x" | "X" | "b" | "B" | "n" | "N" | "e" | "E")
                {
                    i = skip_quoted(b, i, b'\'', true);
                    out.push((Tok::Value, ""));
                } else if word.eq_ignore_ascii_case("null")
                    || word.eq_ignore_ascii_case("true")
                    || word.eq_ignore_ascii_case("false")
                {
                    out.push((Tok::Value, ""));
                } else {
                    out.push((Tok::Word, word));
                }
            }
            _ => {
                // Operators: keep multi-char ones together.
                let s = i;
                i += 1;
                let two = b.get(s..s + 2);
                if matches!(
                    two,
                    Some(
                        b"<="
                            | b">="
                            | b"<>"
                            | b"!="
                            | b"||"
                            | b"::"
                            | b":="
                            | b"->"
                            | b"&&"
                            | b"<<"
                            | b">>"
                    )
                ) {
                    i += 1;
                    if matches!(b.get(s..s + 3), Some(b"<=>" | b"->>")) {
                        i += 1;
                    }
                }
                let spaced = s > 0 && b[s - 1].is_ascii_whitespace();
                let tok = if &sql[s..i] == "(" && spaced {
                    Tok::OpenSpaced
                } else {
                    Tok::Punct
                };
                out.push((tok, &sql[s..i]));
            }
        }
    }
}

fn skip_line(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// Skips a quoted run starting at `i` (the opening quote); a doubled quote
/// is an escaped quote; with `backslash`, `\x` escapes too. Unterminated
/// runs end at the end of input.
fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'+' | b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    // `1abc` is an identifier in MySQL (e.g. `1st_table`): keep as a value
    // plus word; rare enough not to matter for grouping.
    i
}

fn is_dollar_quote_start(b: &[u8], i: usize) -> bool {
    // $$ or $tag$
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        if b[j].is_ascii_digit() && j == i + 1 {
            return false;
        }
        j += 1;
    }
    b.get(j) == Some(&b'$')
}

fn skip_dollar_quoted(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while b[j] != b'$' {
        j += 1;
    }
    let tag = &b[i..=j];
    match find(b, j + 1, tag) {
        Some(e) => e + tag.len(),
        None => b.len(),
    }
}

/// Collapses `IN (?, ?, ?)` to `IN (?)` and `VALUES (…), (…)` to the first
/// row.
fn collapse(toks: Vec<(Tok, &str)>) -> Vec<(Tok, &str)> {
    let is_open = |t: Option<&(Tok, &str)>| matches!(t, Some((Tok::Punct | Tok::OpenSpaced, "(")));
    let mut out: Vec<(Tok, &str)> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let (t, s) = toks[i];
        out.push((t, s));
        i += 1;
        if t != Tok::Word {
            continue;
        }
        if s.eq_ignore_ascii_case("in") && is_open(toks.get(i)) {
            // A list of only values and commas becomes one value.
            let mut j = i + 1;
            let mut only_values = true;
            while j < toks.len() && toks[j] != (Tok::Punct, ")") {
                if !matches!(toks[j], (Tok::Value, _) | (Tok::Punct, ",")) {
                    only_values = false;
                    break;
                }
                j += 1;
            }
            if only_values && j < toks.len() && j > i + 1 {
                out.extend_from_slice(&[toks[i], (Tok::Value, ""), (Tok::Punct, ")")]);
                i = j + 1;
            }
        } else if s.eq_ignore_ascii_case("values") || s.eq_ignore_ascii_case("value") {
            // Copy the first parenthesised row, skip the following `, (…)` rows.
            let Some(end) = matching_paren(&toks, i) else {
                continue;
            };
            out.extend_from_slice(&toks[i..=end]);
            i = end + 1;
            while toks.get(i) == Some(&(Tok::Punct, ",")) && is_open(toks.get(i + 1)) {
                match matching_paren(&toks, i + 1) {
                    Some(e) => i = e + 1,
                    None => break,
                }
            }
        }
    }
    out
}

fn matching_paren(toks: &[(Tok, &str)], open: usize) -> Option<usize> {
    if !matches!(toks.get(open), Some((Tok::Punct | Tok::OpenSpaced, "("))) {
        return None;
    }
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match *t {
            (Tok::Punct | Tok::OpenSpaced, "(") => depth += 1,
            (Tok::Punct, ")") => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s, Dialect::MySql, 4096)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            n("SELECT * FROM users WHERE id = 42 AND name = 'O''Brien' AND x = -3.5e2"),
            "SELECT * FROM users WHERE id = ? AND name = ? AND x = ?"
        );
        assert_eq!(
            n("select a from t where b=\"str\""),
            "select a from t where b = ?"
        );
        assert_eq!(
            n("UPDATE t SET v = v + 1 WHERE h = 0xFF"),
            "UPDATE t SET v = v + ? WHERE h = ?"
        );
        assert_eq!(n("SELECT x'ABCD', NULL, TRUE"), "SELECT ?, ?, ?");
    }

    #[test]
    fn same_shape_same_text() {
        let a = n("SELECT hash, title FROM photos WHERE lang = 'ko' LIMIT 20 OFFSET 0");
        let b = n("SELECT  hash,  title\n FROM photos\tWHERE lang='en' LIMIT 20 OFFSET 40");
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        assert_eq!(
            a,
            "SELECT hash, title FROM photos WHERE lang = ? LIMIT ? OFFSET ?"
        );
    }

    #[test]
    fn digits_in_identifiers_are_kept() {
        assert_eq!(
            n("SELECT t2.col3 FROM table1 t2"),
            "SELECT t2.col3 FROM table1 t2"
        );
        assert_eq!(
            n("SELECT `order`.`id1` FROM `order`"),
            "SELECT `order`.`id1` FROM `order`"
        );
    }

    #[test]
    fn comments_are_stripped() {
        assert_eq!(
            n("/* app:web */ SELECT 1 -- trailing\n FROM dual # mysql comment"),
            "SELECT ? FROM dual"
        );
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            n("SELECT * FROM t WHERE a = ? AND b = :name"),
            "SELECT * FROM t WHERE a = ? AND b = ?"
        );
        assert_eq!(
            normalize(
                "SELECT * FROM t WHERE a = $1 AND b::text = $2",
                Dialect::Postgres,
                100
            ),
            "SELECT * FROM t WHERE a = ? AND b::text = ?"
        );
    }

    #[test]
    fn in_lists_and_values_collapse() {
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (1, 2, 3, 4)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (?)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (SELECT id FROM u)"),
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)"
        );
        assert_eq!(
            n("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')"),
            "INSERT INTO t (a, b) VALUES (?, ?)"
        );
        assert_eq!(
            n("INSERT INTO t (a,b) VALUES (1,'x')"),
            n("INSERT INTO t (a, b) VALUES (9, 'q'), (8, 'r')")
        );
    }

    #[test]
    fn function_calls_keep_their_paren() {
        assert_eq!(n("SELECT COUNT(*) FROM t"), "SELECT COUNT(*) FROM t");
        assert_eq!(
            n("SELECT NOW(), MAX(a) FROM t"),
            "SELECT NOW(), MAX(a) FROM t"
        );
    }

    #[test]
    fn postgres_quoting() {
        assert_eq!(
            normalize(
                r#"SELECT "Name" FROM "T" WHERE body = $$it's$$ AND e = E'a\'b'"#,
                Dialect::Postgres,
                200
            ),
            r#"SELECT "Name" FROM "T" WHERE body = ? AND e = ?"#
        );
    }

    #[test]
    fn truncates_after_normalising() {
        let long = format!(
            "SELECT * FROM t WHERE id IN ({})",
            vec!["1"; 5000].join(",")
        );
        assert_eq!(n(&long), "SELECT * FROM t WHERE id IN (?)");
        let out = normalize(
            "SELECT aaaaaaaaaa, bbbbbbbbbb, cccccccccc FROM t",
            Dialect::MySql,
            20,
        );
        assert!(out.len() <= 20, "{out}");
        assert!(out.ends_with('…'));
        let utf = normalize("SELECT ééééééééééé FROM t", Dialect::MySql, 12);
        assert!(utf.len() <= 12);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "'",
            "\"",
            "`",
            "/*",
            "--",
            "$",
            "$$",
            "$a",
            "0x",
            "1e",
            "IN (",
            "VALUES (",
            ":",
            "::",
            "-",
            "é",
            "\u{0}",
            "?,?",
            "VALUES (1), (",
            "$1$",
        ] {
            let _ = normalize(s, Dialect::MySql, 64);
            let _ = normalize(s, Dialect::Postgres, 64);
        }
    }

    #[test]
    fn random_inputs_never_panic_and_respect_the_limit() {
        // A small deterministic generator over SQL-ish characters.
        let alphabet: Vec<char> = "SELECTINVALUES ()',\"`$?:-#/*\\0123456789.eEx_ab\né;+"
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let s: String = (0..len)
                .map(|k| alphabet[((state >> (k % 50)) as usize + k * 7) % alphabet.len()])
                .collect();
            for d in [Dialect::MySql, Dialect::Postgres] {
                let out = normalize(&s, d, 32);
                assert!(out.len() <= 32, "{s:?} -> {out:?}");
            }
        }
    }
}
