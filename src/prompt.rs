//! Prompts as AUTOMATIC1111 users write them: emphasis `(x)`, `[x]`, `(x:1.5)`, `BREAK`,
//! prompt editing `[from:to:when]` and alternation `[a|b]`, and prompts longer than 75
//! tokens, with A1111's semantics ("Original" emphasis).
//!
//! Two stages, as in A1111: [`schedule`] resolves editing and alternation into the prompt
//! text each sampling step sees (`prompt_parser.get_learned_conditioning_prompt_schedules`),
//! then [`parse_attention`] splits one such text into weighted fragments
//! (`prompt_parser.parse_prompt_attention`), and [`chunks`] packs the fragments' tokens
//! into 75-token chunks (`sd_hijack_clip.tokenize_line`). The pipeline encodes each chunk,
//! weights its states and concatenates the chunks.

/// A piece of a prompt after emphasis parsing: text with its weight, or a `BREAK`.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String, f64),
    Break,
}

/// `(x)` multiplies by this, `[x]` divides by it.
const ROUND: f64 = 1.1;

/// Tokens of the A1111 emphasis grammar, in the order A1111's regex tries them.
#[derive(Debug)]
enum Tok<'a> {
    Escaped(&'a str),
    Open(char),
    Weight(&'a str, f64),
    CloseRound,
    CloseSquare,
    Text(&'a str),
}

/// A1111's `re_attention` as a scanner: escapes, brackets, `:number)`, runs of plain text,
/// and a lone `:` or `\` as text.
fn attention_tokens(text: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().unwrap_or(' ');
        if c == '\\' {
            match rest[1..].chars().next() {
                Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                    out.push(Tok::Escaped(&rest[1..1 + n.len_utf8()]));
                    i += 1 + n.len_utf8();
                }
                _ => {
                    out.push(Tok::Text("\\"));
                    i += 1;
                }
            }
            continue;
        }
        match c {
            '(' | '[' => {
                out.push(Tok::Open(c));
                i += 1;
            }
            ')' => {
                out.push(Tok::CloseRound);
                i += 1;
            }
            ']' => {
                out.push(Tok::CloseSquare);
                i += 1;
            }
            ':' => {
                // `:\s*([+-]?[.\d]+)\s*\)`; otherwise the colon is text.
                match weight_at(rest) {
                    Some((len, w)) => {
                        out.push(Tok::Weight(&rest[..len], w));
                        i += len;
                    }
                    None => {
                        out.push(Tok::Text(":"));
                        i += 1;
                    }
                }
            }
            _ => {
                let end = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                out.push(Tok::Text(&rest[..end]));
                i += end;
            }
        }
    }
    out
}

/// At a `:`, the length of `:\s*([+-]?[.\d]+)\s*\)` and the number, when it matches and the
/// number parses (A1111 would fail on `1.2.3`; here it stays text).
fn weight_at(s: &str) -> Option<(usize, f64)> {
    let mut i = 1;
    let bytes = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < s.len() && s[i..].starts_with(char::is_whitespace) {
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
        i
    };
    i = skip_ws(i);
    let start = i;
    if i < s.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
        i += 1;
    }
    let digits = i;
    while i < s.len() && (bytes[i] == b'.' || bytes[i].is_ascii_digit()) {
        i += 1;
    }
    if i == digits {
        return None;
    }
    let number = &s[start..i];
    i = skip_ws(i);
    if i < s.len() && bytes[i] == b')' {
        number.parse::<f64>().ok().filter(|w| w.is_finite()).map(|w| (i + 1, w))
    } else {
        None
    }
}

/// Splits `text` at A1111's `\s*\bBREAK\b\s*`.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(pos) = text[search..].find("BREAK").map(|p| p + search) {
        let end = pos + "BREAK".len();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let before_ok = !word(text[..pos].chars().next_back());
        let after_ok = !word(text[end..].chars().next());
        if before_ok && after_ok {
            let left = text[start..pos].trim_end();
            parts.push(left);
            let skip = text[end..].len() - text[end..].trim_start().len();
            start = end + skip;
            search = start;
        } else {
            search = end;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A1111's `parse_prompt_attention`: text with weights. `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w,
/// escapes `\(` `\)` `\[` `\]` `\\`, unclosed brackets closed at the end, `BREAK` kept as a
/// piece, and neighbours of equal weight merged.
pub fn parse_attention(text: &str) -> Vec<Piece> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    const BREAK_WEIGHT: f64 = -1.0;
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, m: f64| {
        for r in res.iter_mut().skip(from) {
            r.1 *= m;
        }
    };
    for tok in attention_tokens(text) {
        match tok {
            Tok::Escaped(s) => res.push((s.to_string(), 1.0)),
            Tok::Open('(') => round.push(res.len()),
            Tok::Open(_) => square.push(res.len()),
            Tok::Weight(raw, w) => match round.pop() {
                Some(start) => multiply(&mut res, start, w),
                None => res.push((raw.to_string(), 1.0)),
            },
            Tok::CloseRound => match round.pop() {
                Some(start) => multiply(&mut res, start, ROUND),
                None => res.push((")".into(), 1.0)),
            },
            Tok::CloseSquare => match square.pop() {
                Some(start) => multiply(&mut res, start, 1.0 / ROUND),
                None => res.push(("]".into(), 1.0)),
            },
            Tok::Text(t) => {
                for (i, part) in split_break(t).into_iter().enumerate() {
                    if i > 0 {
                        res.push(("BREAK".into(), BREAK_WEIGHT));
                    }
                    res.push((part.to_string(), 1.0));
                }
            }
        }
    }
    for start in round {
        multiply(&mut res, start, ROUND);
    }
    for start in square {
        multiply(&mut res, start, 1.0 / ROUND);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    merged
        .into_iter()
        .map(|(t, w)| if w == BREAK_WEIGHT && t == "BREAK" { Piece::Break } else { Piece::Text(t, w) })
        .collect()
}

/// One 77-token chunk: BOS, up to 75 tokens, EOS, padding; with a weight per position.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ids: Vec<i64>,
    pub weights: Vec<f64>,
}

/// How many tokens a chunk holds between BOS and EOS.
pub const CHUNK_TOKENS: usize = 75;
/// The most chunks a prompt is encoded in (2,400 tokens); the rest is cut with a warning,
/// so that a hostile prompt cannot make every attention layer arbitrarily long.
pub const MAX_CHUNKS: usize = 32;
/// A1111's `comma_padding_backtrack`: text after a comma this close to a full chunk's end
/// moves to the next chunk.
const COMMA_BACKTRACK: usize = 20;

/// The special ids chunks are built with.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    pub comma: Option<i64>,
}

/// A1111's `tokenize_line`: each piece's tokens (from `tokenize`, without BOS/EOS) packed
/// into chunks of 75, each wrapped in BOS/EOS and padded; `BREAK` starts a new chunk; when a
/// chunk fills, the tokens after a comma within its last 20 move to the next chunk; a
/// multi-vector embedding (`group(id)` > 1 ids from its first) is never split: when it does
/// not fit, the chunk closes before it.
pub fn chunks(
    pieces: &[Piece],
    tokenize: &dyn Fn(&str) -> Vec<i64>,
    group: &dyn Fn(i64) -> usize,
    sp: Specials,
) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut tokens: Vec<i64> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    let mut last_comma: Option<usize> = None;
    let close = |tokens: &mut Vec<i64>, weights: &mut Vec<f64>, out: &mut Vec<Chunk>| {
        let mut ids = Vec::with_capacity(CHUNK_TOKENS + 2);
        ids.push(sp.bos);
        ids.append(tokens);
        ids.push(sp.eos);
        let mut w = Vec::with_capacity(CHUNK_TOKENS + 2);
        w.push(1.0);
        w.append(weights);
        w.push(1.0);
        ids.resize(CHUNK_TOKENS + 2, sp.pad);
        w.resize(CHUNK_TOKENS + 2, 1.0);
        out.push(Chunk { ids, weights: w });
    };
    for piece in pieces {
        let (text, weight) = match piece {
            Piece::Break => {
                close(&mut tokens, &mut weights, &mut out);
                last_comma = None;
                continue;
            }
            Piece::Text(t, w) => (t, *w),
        };
        for token in tokenize(text) {
            if Some(token) == sp.comma {
                last_comma = Some(tokens.len());
            } else if tokens.len() == CHUNK_TOKENS {
                if let Some(c) = last_comma.filter(|&c| tokens.len() - c <= COMMA_BACKTRACK) {
                    let moved_tokens = tokens.split_off(c + 1);
                    let moved_weights = weights.split_off(c + 1);
                    close(&mut tokens, &mut weights, &mut out);
                    last_comma = None;
                    tokens = moved_tokens;
                    weights = moved_weights;
                }
            }
            let n = group(token);
            if tokens.len() == CHUNK_TOKENS || (n > 1 && tokens.len() + n > CHUNK_TOKENS) {
                close(&mut tokens, &mut weights, &mut out);
                last_comma = None;
            }
            tokens.push(token);
            weights.push(weight);
        }
    }
    if !tokens.is_empty() || out.is_empty() {
        close(&mut tokens, &mut weights, &mut out);
    }
    out
}

/// A node of the prompt-editing grammar.
#[derive(Debug, Clone)]
enum Node {
    Text(String),
    /// `[before:after:when]`; `when` already in steps.
    Scheduled(Vec<Node>, Vec<Node>, usize),
    Alternate(Vec<Vec<Node>>),
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
    steps: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    /// A sequence of nodes until one of `stops` (not consumed) or the end. Brackets that
    /// do not form editing or alternation stay as text, as do stray `:`/`|`/closers when
    /// `stops` does not include them.
    fn seq(&mut self, stops: &[char]) -> Vec<Node> {
        let mut out = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if stops.contains(&c) {
                break;
            }
            match c {
                '\\' => {
                    text.push('\\');
                    self.i += 1;
                    if let Some(n) = self.peek() {
                        text.push(n);
                        self.i += n.len_utf8();
                    }
                }
                '[' => {
                    let save = self.i;
                    self.i += 1;
                    match self.bracket() {
                        Some(node) => {
                            if !text.is_empty() {
                                out.push(Node::Text(std::mem::take(&mut text)));
                            }
                            out.push(node);
                        }
                        None => {
                            self.i = save + 1;
                            text.push('[');
                        }
                    }
                }
                '(' => {
                    // Emphasis `(a)` / `(a:w)` stays text; its inside may hold editing, and its
                    // `:` is its own, not a schedule's.
                    self.i += 1;
                    text.push('(');
                    out.push(Node::Text(std::mem::take(&mut text)));
                    out.extend(self.seq(&[')', ':']));
                    if self.peek() == Some(':') {
                        self.i += 1;
                        out.push(Node::Text(":".into()));
                        out.extend(self.seq(&[')']));
                    }
                    if self.peek() == Some(')') {
                        self.i += 1;
                        out.push(Node::Text(")".into()));
                    }
                }
                _ => {
                    text.push(c);
                    self.i += c.len_utf8();
                }
            }
        }
        if !text.is_empty() {
            out.push(Node::Text(text));
        }
        out
    }

    /// After `[`: `[a:b:when]`, `[b:when]`, `[a|b|...]` or plain emphasis `[a]` (kept as
    /// text). `None` when it is none of these (the `[` is then text).
    fn bracket(&mut self) -> Option<Node> {
        let first = self.seq(&[':', '|', ']']);
        match self.peek()? {
            ']' => {
                self.i += 1;
                let mut v = vec![Node::Text("[".into())];
                v.extend(first);
                v.push(Node::Text("]".into()));
                // Emphasis: returned as one alternate of one option, i.e. inline text.
                Some(Node::Alternate(vec![v]))
            }
            '|' => {
                let mut options = vec![first];
                while self.peek() == Some('|') {
                    self.i += 1;
                    options.push(self.seq(&['|', ']']));
                }
                if self.peek() != Some(']') {
                    return None;
                }
                self.i += 1;
                Some(Node::Alternate(options))
            }
            ':' => {
                self.i += 1;
                let second_start = self.i;
                let second = self.seq(&[':', ']']);
                match self.peek()? {
                    ']' => {
                        // `[to:when]`: the second part must be the number.
                        let when = self.when(&self.s[second_start..self.i])?;
                        self.i += 1;
                        Some(Node::Scheduled(Vec::new(), first, when))
                    }
                    ':' => {
                        self.i += 1;
                        let start = self.i;
                        let end = self.s[start..].find(']').map(|p| p + start)?;
                        let when = self.when(&self.s[start..end])?;
                        self.i = end + 1;
                        Some(Node::Scheduled(first, second, when))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A1111's step from `when` (new scheduling): with a `.`, a fraction of the steps;
    /// without, a step number; at most `steps`.
    fn when(&self, raw: &str) -> Option<usize> {
        let s = raw.trim();
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || c == '.') || s.matches('.').count() > 1 {
            return None;
        }
        let v: f64 = s.parse().ok()?;
        let v = if s.contains('.') { v * self.steps as f64 } else { v };
        Some((v as usize).min(self.steps))
    }
}

fn collect(nodes: &[Node], steps: usize, out: &mut Vec<usize>) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Scheduled(a, b, when) => {
                if *when >= 1 {
                    out.push(*when);
                }
                collect(a, steps, out);
                collect(b, steps, out);
            }
            Node::Alternate(options) => {
                if options.len() > 1 {
                    out.extend(1..=steps);
                }
                for o in options {
                    collect(o, steps, out);
                }
            }
        }
    }
}

fn at_step(nodes: &[Node], step: usize, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Scheduled(before, after, when) => at_step(if step <= *when { before } else { after }, step, out),
            Node::Alternate(options) => at_step(&options[(step - 1) % options.len()], step, out),
        }
    }
}

/// A1111's prompt schedule for `steps` sampling steps: `(end_step, text)` pairs in order;
/// sampling step `k` (0-based) uses the first pair with `k <= end_step` (A1111's rule,
/// off-by-one included). A prompt without editing or alternation gives `[(steps, prompt)]`.
pub fn schedule(prompt: &str, steps: usize) -> Vec<(usize, String)> {
    let steps = steps.max(1);
    if !prompt.contains('[') {
        return vec![(steps, prompt.to_string())];
    }
    let mut p = Parser { s: prompt, i: 0, steps };
    let mut nodes = Vec::new();
    while p.i < prompt.len() {
        nodes.extend(p.seq(&[]));
        if p.i < prompt.len() {
            // A closer the sequence stopped at (only inside emphasis): keep it as text.
            let c = p.peek().unwrap_or(' ');
            nodes.push(Node::Text(c.to_string()));
            p.i += c.len_utf8();
        }
    }
    let mut ends = vec![steps];
    collect(&nodes, steps, &mut ends);
    ends.sort_unstable();
    ends.dedup();
    ends.into_iter()
        .map(|t| {
            let mut text = String::new();
            at_step(&nodes, t, &mut text);
            (t, text)
        })
        .collect()
}

/// Which entry of a [`schedule`] (or of anything keyed by its end steps) a 0-based sampling
/// step uses.
pub fn index_at<T>(schedule: &[(usize, T)], step: usize) -> usize {
    schedule.iter().position(|(end, _)| step <= *end).unwrap_or(schedule.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, w: f64) -> Piece {
        Piece::Text(s.into(), w)
    }

    fn close(a: &[Piece], b: &[Piece]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Piece::Text(s, w), Piece::Text(s2, w2)) => s == s2 && (w - w2).abs() < 1e-9,
                (Piece::Break, Piece::Break) => true,
                _ => false,
            })
    }

    /// The examples in A1111's `parse_prompt_attention` docstring.
    #[test]
    fn a1111_documented_examples() {
        let cases: Vec<(&str, Vec<Piece>)> = vec![
            ("normal text", vec![t("normal text", 1.0)]),
            ("an (important) word", vec![t("an ", 1.0), t("important", 1.1), t(" word", 1.0)]),
            ("(unbalanced", vec![t("unbalanced", 1.1)]),
            ("\\(literal\\]", vec![t("(literal]", 1.0)]),
            ("(unnecessary)(parens)", vec![t("unnecessaryparens", 1.1)]),
            (
                "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                vec![
                    t("a ", 1.0),
                    t("house", 1.5730000000000004),
                    t(" ", 1.1),
                    t("on", 1.0),
                    t(" a ", 1.1),
                    t("hill", 0.55),
                    t(", sun, ", 1.1),
                    t("sky", 1.4641000000000006),
                    t(".", 1.1),
                ],
            ),
        ];
        for (text, want) in cases {
            let got = parse_attention(text);
            assert!(close(&got, &want), "{text}: {got:?}");
        }
    }

    #[test]
    fn break_weights_and_literal_numbers() {
        let got = parse_attention("a BREAK b");
        assert!(close(&got, &[t("a", 1.0), Piece::Break, t("b", 1.0)]), "{got:?}");
        // BREAK inside a word is text.
        assert!(close(&parse_attention("BREAKFAST"), &[t("BREAKFAST", 1.0)]));
        // A weight that is not a number: the colon and the word are text, the bracket ×1.1.
        let got = parse_attention("(word:abc)");
        assert!(close(&got, &[t("word:abc", 1.1)]), "{got:?}");
        assert!(close(&parse_attention("[x]"), &[t("x", 1.0 / 1.1)]));
        assert!(close(&parse_attention("(x:1.5)"), &[t("x", 1.5)]));
        assert!(close(&parse_attention("a\\\\b"), &[t("a\\b", 1.0)]));
        assert!(close(&parse_attention(""), &[t("", 1.0)]));
        // A stray closer is text.
        assert!(close(&parse_attention("a) b]"), &[t("a) b]", 1.0)]));
        let got = parse_attention("(x:1.2.3)");
        assert!(close(&got, &[t("x:1.2.3", 1.1)]), "{got:?}");
    }

    #[test]
    fn schedules_follow_a1111() {
        // The examples of A1111's get_learned_conditioning_prompt_schedules doctest.
        assert_eq!(schedule("test", 10), vec![(10, "test".to_string())]);
        assert_eq!(schedule("a [b:3]", 10), vec![(3, "a ".into()), (10, "a b".into())]);
        assert_eq!(schedule("a [b: 3]", 10), vec![(3, "a ".into()), (10, "a b".into())]);
        assert_eq!(schedule("a [[[b]]:2]", 10), vec![(2, "a ".into()), (10, "a [[b]]".into())]);
        assert_eq!(schedule("[(a:2):3]", 10), vec![(3, "".into()), (10, "(a:2)".into())]);
        assert_eq!(schedule("a [b : c : 1] d", 10), vec![(1, "a b  d".into()), (10, "a  c  d".into())]);
        assert_eq!(schedule("a[b:[c:d:2]:1]e", 10), vec![(1, "abe".into()), (2, "ace".into()), (10, "ade".into())]);
        assert_eq!(schedule("a [unbalanced", 10), vec![(10, "a [unbalanced".into())]);
        assert_eq!(schedule("a [b:.5] c", 10), vec![(5, "a  c".into()), (10, "a b c".into())]);
        assert_eq!(schedule("((a][:b:c [d:3]", 10), vec![(3, "((a][:b:c ".into()), (10, "((a][:b:c d".into())]);
        assert_eq!(schedule("[a|(b:1.1)]", 3), vec![(1, "a".into()), (2, "(b:1.1)".into()), (3, "a".into())]);
        assert_eq!(schedule("[fe|]male", 3), vec![(1, "female".into()), (2, "male".into()), (3, "female".into())]);
        assert_eq!(
            schedule("[fe|||]male", 4),
            vec![(1, "female".into()), (2, "male".into()), (3, "male".into()), (4, "male".into())]
        );
        // Which text each 0-based step uses.
        let s = schedule("[cat:dog:5]", 10);
        assert_eq!((0..10).map(|k| index_at(&s, k)).collect::<Vec<_>>(), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn chunks_pad_break_and_move_text_after_a_comma() {
        let sp = Specials { bos: 1000, eos: 1001, pad: 1002, comma: Some(9) };
        // Each "word" is one token: its length.
        let tok = |s: &str| s.split_whitespace().map(|w| if w == "," { 9 } else { w.len() as i64 }).collect();
        let one = |_: i64| 1;
        let c = chunks(&parse_attention("aa (bbb) BREAK c"), &tok, &one, sp);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[0].ids[..4], &[1000, 2, 3, 1001]);
        assert_eq!(c[0].ids[4], 1002);
        assert_eq!(c[0].ids.len(), 77);
        assert!((c[0].weights[2] - 1.1).abs() < 1e-12 && c[0].weights[1] == 1.0);
        assert_eq!(&c[1].ids[..3], &[1000, 1, 1001]);
        // 70 tokens, a comma, then 10 more: the 4 tokens after the comma that fit and the
        // rest move on, so the first chunk ends at the comma.
        let text = format!("{} , {}", ["x"; 70].join(" "), ["yy"; 10].join(" "));
        let c = chunks(&parse_attention(&text), &tok, &one, sp);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].ids[71], 9);
        assert_eq!(c[0].ids[72], 1001);
        assert_eq!(&c[1].ids[..12], &[1000, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1001]);
        // Empty prompt: one chunk of BOS, EOS, padding.
        let c = chunks(&parse_attention(""), &tok, &one, sp);
        assert_eq!((c.len(), &c[0].ids[..3]), (1, &[1000, 1001, 1002][..]));
        // A 3-id group (an embedding of 3 vectors) after 73 tokens moves whole to the next chunk.
        let tok3 = |s: &str| s.split_whitespace().map(|w| if w == "E" { 500 } else { w.len() as i64 }).collect();
        let three = |id: i64| if id == 500 { 3 } else { 1 };
        let c = chunks(&parse_attention(&format!("{} E", ["x"; 73].join(" "))), &tok3, &three, sp);
        assert_eq!((c.len(), c[0].ids[74], c[1].ids[1]), (2, 1001, 500));
    }
}
