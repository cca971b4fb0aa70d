//! Bounds on a policy's text, checked before Cedar's parser sees it.
//!
//! Cedar's parser, its conversion of the parse tree to an expression tree, its validator, its
//! evaluator and the trees' `Drop`, `Clone`, `Display` and JSON forms all recurse on the nesting
//! of an expression, and only the validator and the evaluator check the room left on the stack.
//! A 350-byte policy with 150 nested parentheses overflows a 2 MiB stack in the conversion and
//! aborts the process. So every policy text is first measured by [`measure`], a small scanner
//! that knows Cedar's tokens (string literals with their escapes, `//` comments) and refused when
//! any measure passes its bound.
//!
//! The measure that matters is [`MAX_DEPTH`], an upper bound on the depth of the expression tree
//! Cedar builds: every bracket group (`(..)`, `[..]`, `{..}`) is one level, and inside a group
//! every operator, `.` access, unary `!`/`-` and `if` of one comma-separated element is one more
//! level (Cedar folds `a && b && c` into a left-nested tree, so a chain of n terms is n levels
//! deep). The depth of a group is one plus the largest, over its elements, of the element's
//! operators plus its deepest group. A path from the root of Cedar's tree to a leaf meets each of
//! its nodes once, and each node is owned by a distinct token counted here, so the real depth is
//! never larger. The other bounds are tighter limits on single constructs (far above what a
//! policy written by hand uses), checked first so that the error names the construct.
//!
//! Why 72 is safe: Bulkhead decides on threads of [`STACK_SIZE`] (8 MiB); the server sets its
//! runtime's worker and blocking threads to it. Measured on generated policies (parsed, converted
//! to JSON, validated and evaluated), the costliest constructs are parentheses, records, indexes
//! and `.` chains over records: an optimized build needs about 14 KiB of stack per level, and
//! overflows 2 MiB at about 145 nested parentheses (hence the reported crash at 150) and 8 MiB at
//! about 580; an unoptimized build needs up to about 60 KiB per level and overflows 8 MiB at
//! about 140. So a policy at the bound uses about an eighth of the stack in the server as built
//! for release, and about half in a debug build, where the tests decide one generated policy per
//! construct at its bound, and random nestings within the bounds, on such a thread.

use std::fmt;

/// Stack size, in bytes, of every thread that parses, validates or evaluates policies: the
/// server's runtime threads. The bounds of this module are chosen for it.
pub const STACK_SIZE: usize = 8 * 1024 * 1024;

/// Longest custom policy accepted, in bytes of Cedar text.
pub const MAX_POLICY_BYTES: usize = 16 * 1024;

/// Most tokens in one custom policy (a string literal or a number is one token).
pub const MAX_POLICY_TOKENS: usize = 4096;

/// Most bytes of the custom policies of one namespace, together.
pub const MAX_SET_BYTES: usize = 1024 * 1024;

/// Most tokens of the custom policies of one namespace, together.
pub const MAX_SET_TOKENS: usize = 128 * 1024;

/// Deepest expression tree a policy may make: brackets, operators, `.` accesses, unary operators
/// and `if`s on one path, counted as the module documentation says.
pub const MAX_DEPTH: usize = 72;

/// Deepest nesting of one kind of bracket (parentheses, square brackets or braces; the braces of
/// a `when`/`unless` body are not counted) and of all brackets together.
pub const MAX_BRACKETS: usize = 32;

/// Most `if`s on one path: nested if-then-else.
pub const MAX_IFS: usize = 32;

/// Longest run of `.` accesses, indexes and method calls on one value (`a.b.c`, `s.contains(x)`).
pub const MAX_MEMBER_CHAIN: usize = 16;

/// Most binary operators (`&&`, `||`, comparisons, `in`, `has`, `like`, `is`, `+`, `-`, `*`) in one
/// element of a bracket group: Cedar nests a chain of them one level per operator.
pub const MAX_OPERATOR_CHAIN: usize = 64;

/// Longest run of unary `!` or `-`. Cedar itself refuses more than 4.
pub const MAX_UNARY_RUN: usize = 4;

/// Longest string a `like` can be matched against that does not come from the policy's own
/// text: an attribute of a principal or resource (a user's `email` is refused at sign-in past
/// it; names and ids are shorter).
pub const MAX_ATTRIBUTE_BYTES: usize = 320;

/// Most work the `like` operators of the namespace's policies together may cost one decision,
/// in character steps: Cedar matches a pattern of m characters against a text of n in up to
/// n × m steps (`"aaa…" like "*aaa…b"`), so a policy's cost is the bytes of its patterns times
/// the longest text they can meet (its longest string literal, or [`MAX_ATTRIBUTE_BYTES`]).
/// About a millisecond of one core in an optimized build; without the bound, 16 KiB policies of
/// one `like` each cost about 250 ms apiece on every request of the namespace.
pub const MAX_LIKE_COST: usize = 1 << 20;

/// What a bound limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Construct {
    Bytes,
    Tokens,
    SetBytes,
    SetTokens,
    Depth,
    Parentheses,
    SquareBrackets,
    Braces,
    Brackets,
    IfThenElse,
    MemberChain,
    OperatorChain,
    UnaryRun,
    LikeCost,
    SetLikeCost,
}

impl Construct {
    /// The construct, as an error message names it.
    pub fn describe(self) -> &'static str {
        match self {
            Construct::Bytes => "the policy text, in bytes,",
            Construct::Tokens => "the policy text, in tokens,",
            Construct::SetBytes => "the namespace's policies together, in bytes,",
            Construct::SetTokens => "the namespace's policies together, in tokens,",
            Construct::Depth => "the expression nests (brackets, operators, `.` accesses and `if`s on one path)",
            Construct::Parentheses => "parentheses `( )` nest",
            Construct::SquareBrackets => "sets or indexes `[ ]` nest",
            Construct::Braces => "records `{ }` nest",
            Construct::Brackets => "brackets of all kinds `( ) [ ] { }` nest",
            Construct::IfThenElse => "if-then-else nests",
            Construct::MemberChain => "a chain of `.` accesses, indexes and method calls is",
            Construct::OperatorChain => "a chain of binary operators (`&&`, `||`, comparisons, `+`, ...) is",
            Construct::UnaryRun => "a run of unary `!` or `-` is",
            Construct::LikeCost => "the work of the policy's `like` patterns (pattern bytes × longest text)",
            Construct::SetLikeCost => {
                "the work of the namespace's `like` patterns together (pattern bytes × longest text)"
            }
        }
    }
}

/// A policy text past one of the bounds: what, where, how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub construct: Construct,
    /// The bound that was passed.
    pub max: usize,
    /// 1-based line and column (in characters) of the token that passed it; `None` for the size
    /// bounds, which concern the whole text.
    pub at: Option<(usize, usize)>,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, max) = (self.construct.describe(), self.max);
        let nests = matches!(
            self.construct,
            Construct::Depth
                | Construct::Parentheses
                | Construct::SquareBrackets
                | Construct::Braces
                | Construct::Brackets
                | Construct::IfThenElse
        );
        match self.at {
            None => write!(f, "{what} is over the limit of {max}"),
            Some((l, c)) if nests => write!(f, "{what} deeper than {max} levels at line {l}, column {c}"),
            Some((l, c)) => write!(f, "{what} longer than {max} at line {l}, column {c}"),
        }
    }
}

impl std::error::Error for Exceeded {}

/// The measures of one policy text: its size and how deep it nests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measures {
    pub bytes: usize,
    pub tokens: usize,
    /// Upper bound of the character steps its `like` operators take in one decision.
    pub like_cost: usize,
}

/// Measures `text` and checks every bound of one policy. Never fails on text that is not valid
/// Cedar: what it cannot make sense of is left to Cedar's parser, which reports it.
pub fn measure(text: &str) -> Result<Measures, Exceeded> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(Exceeded { construct: Construct::Bytes, max: MAX_POLICY_BYTES, at: None });
    }
    let mut scan = Scan::new(text);
    while let Some(token) = scan.next() {
        scan.tokens += 1;
        if scan.tokens > MAX_POLICY_TOKENS {
            return Err(Exceeded { construct: Construct::Tokens, max: MAX_POLICY_TOKENS, at: None });
        }
        scan.step(token)?;
    }
    let like_cost = scan.like_bytes.saturating_mul(scan.longest_string.max(MAX_ATTRIBUTE_BYTES));
    if like_cost > MAX_LIKE_COST {
        return Err(Exceeded { construct: Construct::LikeCost, max: MAX_LIKE_COST, at: None });
    }
    Ok(Measures { bytes: text.len(), tokens: scan.tokens, like_cost })
}

/// Checks the bounds of a whole set, given the measures of each of its policies.
pub fn check_set(measures: impl IntoIterator<Item = Measures>) -> Result<(), Exceeded> {
    let (mut bytes, mut tokens, mut like_cost) = (0usize, 0usize, 0usize);
    for m in measures {
        bytes = bytes.saturating_add(m.bytes);
        tokens = tokens.saturating_add(m.tokens);
        like_cost = like_cost.saturating_add(m.like_cost);
        if like_cost > MAX_LIKE_COST {
            return Err(Exceeded { construct: Construct::SetLikeCost, max: MAX_LIKE_COST, at: None });
        }
        if bytes > MAX_SET_BYTES {
            return Err(Exceeded { construct: Construct::SetBytes, max: MAX_SET_BYTES, at: None });
        }
        if tokens > MAX_SET_TOKENS {
            return Err(Exceeded { construct: Construct::SetTokens, max: MAX_SET_TOKENS, at: None });
        }
    }
    Ok(())
}

/// A token, as far as nesting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Open(u8),
    Close(u8),
    /// `,` or `;`: ends an element of a group (or a policy).
    Separator,
    /// `.`
    Dot,
    /// `!`
    Not,
    /// `-`, binary or unary.
    Minus,
    /// A binary operator made of symbols (`&&`, `==`, `+`, `*`, ...).
    Operator,
    /// `:` and `::`, `@`: neither operands nor operators.
    Punct,
    /// An identifier or keyword.
    Word(&'a str),
    /// A string, number or slot (`?principal`).
    Literal,
}

/// One open bracket group.
#[derive(Debug, Clone, Copy)]
struct Frame {
    bracket: u8,
    /// A `when { }`/`unless { }` body: not a record.
    body: bool,
    /// Depth of the group's largest finished element (operators + deepest child group).
    best: usize,
    /// The current element: its operators, `if`s and `.` accesses (each one level)...
    levels: usize,
    /// ...its deepest child group...
    child: usize,
    /// ...its binary operators, its `if`s, and its current runs.
    operators: usize,
    ifs: usize,
    member_run: usize,
    unary_run: usize,
}

impl Frame {
    fn new(bracket: u8, body: bool) -> Frame {
        Frame { bracket, body, best: 0, levels: 0, child: 0, operators: 0, ifs: 0, member_run: 0, unary_run: 0 }
    }

    fn end_element(&mut self) {
        self.best = self.best.max(self.levels + self.child);
        (self.levels, self.child, self.operators, self.ifs, self.member_run, self.unary_run) = (0, 0, 0, 0, 0, 0);
    }

    /// Depth of the group so far: itself and its deepest element.
    fn depth(&self) -> usize {
        1 + self.best.max(self.levels + self.child)
    }
}

struct Scan<'a> {
    text: &'a str,
    pos: usize,
    /// Start of the current token.
    start: usize,
    tokens: usize,
    /// The outermost frame is the policy itself (not a bracket).
    frames: Vec<Frame>,
    /// Open brackets of each kind: `(`, `[`, `{` (bodies excluded), and all.
    open: [usize; 4],
    /// The previous token ended an operand (`x`, `1`, `"s"`, `)`): a following `[`/`(` indexes or
    /// calls it, a following `-` is binary.
    after_operand: bool,
    /// The previous token was `when` or `unless` at the top level.
    before_body: bool,
    /// The previous token was `.`.
    after_dot: bool,
    /// The previous token was the name of an attribute or method, after a `.`.
    method: bool,
    /// The previous token was `like`: a string literal now is its pattern.
    after_like: bool,
    /// Bytes of the `like` patterns, and of the longest string literal.
    like_bytes: usize,
    longest_string: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            text,
            pos: 0,
            start: 0,
            tokens: 0,
            frames: vec![Frame::new(0, false)],
            open: [0; 4],
            after_operand: false,
            before_body: false,
            after_dot: false,
            method: false,
            after_like: false,
            like_bytes: 0,
            longest_string: 0,
        }
    }

    fn at(&self) -> Option<(usize, usize)> {
        let before = &self.text[..self.start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, column))
    }

    fn exceeded(&self, construct: Construct, max: usize) -> Exceeded {
        Exceeded { construct, max, at: self.at() }
    }

    fn check(&self, value: usize, construct: Construct, max: usize) -> Result<(), Exceeded> {
        if value > max {
            return Err(self.exceeded(construct, max));
        }
        Ok(())
    }

    /// The next token, skipping white space and `//` comments as Cedar's lexer does: white space
    /// is every Unicode `White_Space` character (its `\s`, so also a vertical tab or a no-break
    /// space), and a comment ends at a `\n` or a `\r`. Anything Cedar skips that the scan took
    /// for a token, or the other way round, would hide brackets and accesses from the measures.
    fn next(&mut self) -> Option<Token<'a>> {
        let bytes = self.text.as_bytes();
        loop {
            while let Some(c) = self.text[self.pos..].chars().next().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            }
            if bytes[self.pos..].starts_with(b"//") {
                while self.pos < bytes.len() && !matches!(bytes[self.pos], b'\n' | b'\r') {
                    self.pos += 1;
                }
                continue;
            }
            break;
        }
        self.start = self.pos;
        let c = *bytes.get(self.pos)?;
        let two = bytes.get(self.pos..self.pos + 2).unwrap_or_default();
        self.pos += 1;
        Some(match c {
            b'(' | b'[' | b'{' => Token::Open(c),
            b')' | b']' | b'}' => Token::Close(c),
            b',' | b';' => Token::Separator,
            b'.' => Token::Dot,
            b'-' => Token::Minus,
            b'!' if two == b"!=" => {
                self.pos += 1;
                Token::Operator
            }
            b'!' => Token::Not,
            b'&' | b'|' | b'=' | b'<' | b'>' => {
                if matches!(two, b"&&" | b"||" | b"==" | b"<=" | b">=") {
                    self.pos += 1;
                }
                Token::Operator
            }
            b'+' | b'*' | b'/' | b'%' => Token::Operator,
            b'"' => {
                // A string literal: `\` escapes the next character, so `\"` does not end it. An
                // unterminated one runs to the end; Cedar's parser reports it.
                while let Some(&b) = bytes.get(self.pos) {
                    self.pos += 1;
                    match b {
                        b'\\' => self.pos += 1,
                        b'"' => break,
                        _ => {}
                    }
                }
                self.pos = self.pos.min(bytes.len());
                let len = self.pos - self.start;
                self.longest_string = self.longest_string.max(len);
                if self.after_like {
                    self.like_bytes = self.like_bytes.saturating_add(len);
                }
                Token::Literal
            }
            b'?' => {
                while bytes.get(self.pos).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                    self.pos += 1;
                }
                Token::Literal
            }
            // Cedar's numbers are digits only: in `1in x` the `in` is an operator.
            b'0'..=b'9' => {
                while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                Token::Literal
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                while bytes.get(self.pos).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                    self.pos += 1;
                }
                Token::Word(&self.text[self.start..self.pos])
            }
            b':' => {
                if two == b"::" {
                    self.pos += 1;
                }
                Token::Punct
            }
            _ => {
                // Anything else (`@`, `%`, a non-ASCII character) is one token; skip to the next
                // character boundary.
                while !self.text.is_char_boundary(self.pos) {
                    self.pos += 1;
                }
                Token::Punct
            }
        })
    }

    fn top(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("the policy's own frame is never closed")
    }

    fn step(&mut self, token: Token<'a>) -> Result<(), Exceeded> {
        let after_operand = std::mem::replace(&mut self.after_operand, false);
        let before_body = std::mem::replace(&mut self.before_body, false);
        let after_dot = std::mem::replace(&mut self.after_dot, false);
        let method = std::mem::replace(&mut self.method, false);
        self.after_like = false;
        if !matches!(token, Token::Not | Token::Minus) || (token == Token::Minus && after_operand) {
            self.top().unary_run = 0;
        }
        match token {
            Token::Open(b) => {
                let body = b == b'{' && before_body;
                if method || self.frames.len() == 1 {
                    // The arguments of `s.contains(x)` (the `.` counted the call), or the scope
                    // of a policy or an annotation's value.
                } else if after_operand {
                    // An index `a["b"]`: one more access on the value.
                    self.member()?;
                } else {
                    self.top().member_run = 0;
                }
                let kind = match b {
                    b'(' => 0,
                    b'[' => 1,
                    _ => 2,
                };
                if !body {
                    self.open[kind] += 1;
                    self.open[3] += 1;
                }
                self.frames.push(Frame::new(b, body));
                let construct = [Construct::Parentheses, Construct::SquareBrackets, Construct::Braces][kind];
                self.check(self.open[kind], construct, MAX_BRACKETS)?;
                self.check(self.open[3], Construct::Brackets, MAX_BRACKETS)?;
                self.check(self.depth(), Construct::Depth, MAX_DEPTH)?;
            }
            Token::Close(_) => {
                // A closing bracket without its opening one, or of another kind, is Cedar's
                // parser's to report; the scan stays balanced by closing the innermost group.
                if self.frames.len() > 1 {
                    let frame = self.frames.pop().expect("more than one frame");
                    if !frame.body {
                        let kind = match frame.bracket {
                            b'(' => 0,
                            b'[' => 1,
                            _ => 2,
                        };
                        self.open[kind] -= 1;
                        self.open[3] -= 1;
                    }
                    let depth = frame.depth();
                    let parent = self.top();
                    parent.child = parent.child.max(depth);
                }
                self.after_operand = true;
            }
            Token::Separator => {
                self.top().end_element();
            }
            Token::Dot => {
                self.member()?;
                self.after_dot = true;
            }
            Token::Not => self.unary()?,
            Token::Minus if !after_operand => self.unary()?,
            Token::Minus | Token::Operator => self.operator()?,
            Token::Punct => self.top().member_run = 0,
            Token::Word(word) => match word {
                "like" => {
                    self.operator()?;
                    self.after_like = true;
                }
                "has" | "is" | "in" => self.operator()?,
                "if" => {
                    let frame = self.top();
                    frame.member_run = 0;
                    frame.ifs += 1;
                    frame.levels += 1;
                    let ifs = self.frames.iter().map(|f| f.ifs).sum();
                    self.check(ifs, Construct::IfThenElse, MAX_IFS)?;
                    self.check(self.depth(), Construct::Depth, MAX_DEPTH)?;
                }
                "then" | "else" => self.top().member_run = 0,
                "when" | "unless" if self.frames.len() == 1 => {
                    self.before_body = true;
                }
                _ => {
                    // After a `.`, the word is the accessed attribute or method: it continues the
                    // chain, and a `(` right after it calls the method (no further access).
                    // Otherwise it starts a new operand.
                    if after_dot {
                        self.method = true;
                    } else {
                        self.top().member_run = 0;
                    }
                    self.after_operand = true;
                }
            },
            Token::Literal => {
                self.top().member_run = 0;
                self.after_operand = true;
            }
        }
        Ok(())
    }

    /// Depth of the whole policy so far, along the path to the current token.
    fn depth(&self) -> usize {
        // The innermost frame's depth, carried out through each enclosing frame's current element.
        let mut depth = 0;
        for frame in self.frames.iter().rev() {
            depth = 1 + frame.best.max(frame.levels + frame.child.max(depth));
        }
        // The outermost frame is the policy, not a level.
        depth - 1
    }

    fn member(&mut self) -> Result<(), Exceeded> {
        self.nest(Construct::MemberChain, MAX_MEMBER_CHAIN, |frame| {
            frame.member_run += 1;
            frame.member_run
        })
    }

    fn unary(&mut self) -> Result<(), Exceeded> {
        self.nest(Construct::UnaryRun, MAX_UNARY_RUN, |frame| {
            frame.member_run = 0;
            frame.unary_run += 1;
            frame.unary_run
        })
    }

    fn operator(&mut self) -> Result<(), Exceeded> {
        self.nest(Construct::OperatorChain, MAX_OPERATOR_CHAIN, |frame| {
            frame.member_run = 0;
            frame.operators += 1;
            frame.operators
        })
    }

    /// One more level in the top frame: `count` updates the frame's run of `construct` and
    /// returns it, which must stay within `max`; then the depth must stay within its bound.
    fn nest(
        &mut self,
        construct: Construct,
        max: usize,
        count: impl FnOnce(&mut Frame) -> usize,
    ) -> Result<(), Exceeded> {
        let frame = self.top();
        frame.levels += 1;
        let run = count(frame);
        self.check(run, construct, max)?;
        self.check(self.depth(), Construct::Depth, MAX_DEPTH)
    }
}

#[cfg(test)]
mod tests;
