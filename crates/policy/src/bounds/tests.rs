// The engine's own tests ask it directly, below the decision function.
#![allow(clippy::disallowed_methods)]

use bulkhead_core::Role;

use super::*;
use crate::{Engine, PrincipalRef, Request, ResourceRef};

fn policy(cond: &str) -> String {
    format!("permit(principal, action, resource) when {{ {cond} }};")
}

/// Runs `f` on a thread with the stack the server decides on.
fn on_server_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK_SIZE)
        .spawn(f)
        .expect("spawn a thread")
        .join()
        .expect("the thread does not panic")
}

/// Checks, compiles and decides `text` (a permit of everything for viewers) on the server's
/// stack: accepted, valid, and allowing a request with no errors.
fn accepted_and_decided(text: String) {
    on_server_stack(move || {
        let engine = Engine::new();
        engine.check_policy(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let set = engine.compile(&[("pol_x".to_owned(), text.clone())]).expect("compiles");
        let principal = PrincipalRef::Key { id: "key_x".to_owned(), role: Role::Viewer };
        let resource = ResourceRef::Sandbox { id: "sbx_x".to_owned(), project: None };
        let d = set.decide(&Request {
            principal: &principal,
            namespace: "acme",
            action: "sandbox.exec",
            resource: &resource,
            target_role: None,
        });
        assert!(d.allowed && d.errors.is_empty(), "{text}: {d:?}");
        assert_eq!(d.policies, ["pol_x"], "{text}");
        drop(set);
    })
}

/// Refused before Cedar sees it, naming `construct`; on an ordinary 2 MiB stack, since Cedar never
/// runs.
fn refused_naming(text: &str, construct: Construct) -> String {
    scanned_past(text, construct);
    let t = text.to_owned();
    let message = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let e = Engine::shared().check_policy(&t).expect_err("refused");
            let mut m = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                m.push_str(&format!(": {s}"));
            }
            m
        })
        .expect("spawn")
        .join()
        .expect("no panic");
    assert!(message.contains(construct.describe()), "{message}");
    message
}

/// Refused by the scan as past `construct`'s bound.
fn scanned_past(text: &str, construct: Construct) {
    let short: String = text.chars().take(120).collect();
    let e = measure(text).expect_err(&short);
    assert_eq!(e.construct, construct, "{short}: {e}");
}

/// One generator per construct: the policy that nests it `n` deep.
fn generated(construct: Construct, n: usize) -> String {
    policy(&match construct {
        Construct::Parentheses => format!("{}true{}", "(".repeat(n), ")".repeat(n)),
        Construct::SquareBrackets => format!("{0}1{1} == {0}1{1}", "[".repeat(n), "]".repeat(n)),
        Construct::Braces => format!("{0}true{1} == {0}true{1}", "{a: ".repeat(n), "}".repeat(n)),
        Construct::Brackets => {
            let open: String = (0..n).map(|i| ["(", "[", "{a: "][i % 3]).collect();
            let close: String = (0..n).rev().map(|i| [")", "]", "}"][i % 3]).collect();
            format!("{open}1{close} == {open}1{close} || true")
        }
        Construct::IfThenElse => format!("{}true{}", "if true then ".repeat(n), " else false".repeat(n)),
        // A chain over records: as deep in records as it is long.
        Construct::MemberChain => format!("{}true{}{}", "{a: ".repeat(n), "}".repeat(n), ".a".repeat(n)),
        Construct::OperatorChain => vec!["true"; n + 1].join(" && "),
        Construct::UnaryRun => format!("{}true", "!".repeat(n)),
        Construct::Depth => {
            // Parentheses and operators on one path: each parenthesis holds one `&&` whose first
            // operand is the next parenthesis (Cedar nests those leftmost), and the innermost
            // holds a chain of the remaining levels.
            let brackets = MAX_BRACKETS;
            let inner = n - 1 - 2 * brackets;
            format!("{}{}{}", "(".repeat(brackets), vec!["true"; inner + 1].join(" || "), ") && true".repeat(brackets))
        }
        Construct::Bytes
        | Construct::Tokens
        | Construct::SetBytes
        | Construct::SetTokens
        | Construct::LikeCost
        | Construct::SetLikeCost => {
            unreachable!("sizes and `like` costs have their own tests")
        }
    })
}

const BOUNDS: [(Construct, usize); 9] = [
    (Construct::Parentheses, MAX_BRACKETS),
    (Construct::SquareBrackets, MAX_BRACKETS),
    (Construct::Braces, MAX_BRACKETS),
    (Construct::Brackets, MAX_BRACKETS),
    (Construct::IfThenElse, MAX_IFS),
    (Construct::MemberChain, MAX_MEMBER_CHAIN),
    (Construct::OperatorChain, MAX_OPERATOR_CHAIN),
    (Construct::UnaryRun, MAX_UNARY_RUN),
    (Construct::Depth, MAX_DEPTH),
];

#[test]
fn every_construct_at_its_bound_is_accepted_and_decided_on_the_server_stack() {
    for (construct, max) in BOUNDS {
        let text = generated(construct, max);
        measure(&text).unwrap_or_else(|e| panic!("{construct:?} at {max}: {e}"));
        accepted_and_decided(text);
    }
}

#[test]
fn every_construct_past_its_bound_is_refused_with_its_name_and_place() {
    for (construct, max) in BOUNDS {
        let text = generated(construct, max + 1);
        let message = refused_naming(&text, construct);
        assert!(message.contains("at line 1, column"), "{message}");
    }
}

#[test]
fn the_depth_measure_bounds_cedars_tree() {
    let at = generated(Construct::Depth, MAX_DEPTH);
    // The generated policy is at the depth bound and within every other bound.
    scanned_past(&generated(Construct::Depth, MAX_DEPTH + 1), Construct::Depth);
    assert!(measure(&at).is_ok());
    // A long chain whose first operand nests: the chain counts on the path to the nesting.
    let text = policy(&format!("{}true{}", "(".repeat(30), " && true && true)".repeat(30)));
    scanned_past(&text, Construct::Depth);
}

#[test]
fn the_reported_attacks_are_refused_before_parsing() {
    let parens = policy(&format!("{}true{}", "(".repeat(150), ")".repeat(150)));
    assert!(parens.len() < 400);
    let m = refused_naming(&parens, Construct::Parentheses);
    assert!(m.contains("line 1, column 76"), "{m}");
    let sets = policy(&format!("{}1{} == [1]", "[".repeat(150), "]".repeat(150)));
    refused_naming(&sets, Construct::SquareBrackets);
    // The whole allowed size of one bracket, and of operators.
    refused_naming(&"(".repeat(MAX_POLICY_BYTES), Construct::Parentheses);
    refused_naming(&policy(&format!("[{}].isEmpty()", vec!["1"; 3000].join(","))), Construct::Tokens);
    refused_naming(&policy(&format!("{}1 == 1", "-".repeat(100))), Construct::UnaryRun);
}

#[test]
fn brackets_in_strings_and_comments_do_not_count() {
    let deep = "(".repeat(2000);
    let text = format!(
        "// {deep} [[[[ {{{{\n@id(\"{deep}\")\npermit(principal, action, resource) when {{\n  \
         // {deep}\n  \"\\\"{deep}\\\\\" != \"]]]]\\\\\" && \"\\u{{28}}\" == \"(\"\n}};"
    );
    assert!(measure(&text).is_ok(), "{:?}", measure(&text));
    accepted_and_decided(text);
    // An escaped quote does not end the string; an escaped backslash does not escape the quote.
    let text = policy(&format!("\"\\\"{}\" == \"\"", "(".repeat(100)));
    assert!(measure(&text).is_ok());
    let text = policy(&format!("\"\\\\\" == \"\" || {}true{}", "(".repeat(100), ")".repeat(100)));
    scanned_past(&text, Construct::Parentheses);
}

#[test]
fn what_cedars_lexer_skips_is_skipped_by_the_scan_and_nothing_more() {
    // Cedar ends a comment at `\r` too: what follows on the line is code.
    let text = policy(&format!("true // \r || {}true{}", "(".repeat(100), ")".repeat(100)));
    refused_naming(&text, Construct::Parentheses);
    // Every Unicode white space separates tokens in Cedar: an index after it is still an index.
    for space in ['\u{b}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}'] {
        let text = policy(&format!("context{} == 1", format!("{space}[\"a\"]").repeat(1000)));
        refused_naming(&text, Construct::MemberChain);
    }
    // At the bound, the same chain is accepted.
    let text = policy(&format!("{}true{}{} || true", "{a: ".repeat(16), "}".repeat(16), "\u{a0}[\"a\"]".repeat(16)));
    assert!(measure(&text).is_ok(), "{:?}", measure(&text));
    // Numbers are digits only, so `1in` is a literal and an operator; `/` and `%` are operators.
    scanned_past(&policy(&format!("1{}", "in 1".repeat(100))), Construct::OperatorChain);
    scanned_past(&policy(&format!("1{}", "%1".repeat(100))), Construct::OperatorChain);
    scanned_past(&policy(&format!("1{}", "/1".repeat(100))), Construct::OperatorChain);
}

#[test]
fn the_body_of_when_and_unless_is_not_a_record_and_elements_do_not_add_up() {
    // Records nested to the bound in each of many conditions and set elements: only the deepest
    // path counts.
    let rec = format!("{}1{}", "{a: ".repeat(MAX_BRACKETS - 2), "}".repeat(MAX_BRACKETS - 2));
    let set = vec![format!("[{rec}]"); 16].join(", ");
    let text = format!(
        "@id(\"a\") @b(\"c\")\npermit(principal, action, resource)\n  when {{ [{set}].contains([{rec}]) }}\n  \
         unless {{ {rec} == {rec} && false }};"
    );
    measure(&text).unwrap_or_else(|e| panic!("{e}"));
    accepted_and_decided(text);
}

#[test]
fn sizes_are_bounded_per_policy_and_per_set() {
    // Exactly the token bound: a set literal of ones.
    let tokens = |n: usize| policy(&format!("[{}].contains(1)", vec!["1"; n].join(",")));
    let n = (1..4096).find(|n| measure(&tokens(*n)).map(|m| m.tokens) == Ok(MAX_POLICY_TOKENS)).expect("some n");
    accepted_and_decided(tokens(n));
    refused_naming(&tokens(n + 1), Construct::Tokens);

    let engine = Engine::shared();
    // The set: tokens first, then bytes.
    let many = |count: usize, text: &str| -> Vec<(String, String)> {
        (0..count).map(|i| (format!("pol_{i}"), text.to_owned())).collect()
    };
    let per = MAX_SET_TOKENS / MAX_POLICY_TOKENS;
    let big = tokens(n);
    on_server_stack(move || {
        Engine::shared().compile(&many(per, &big)).expect("at the set's token bound");
        let e = Engine::shared().compile(&many(per + 1, &big)).expect_err("past it");
        assert!(matches!(e, crate::PolicyError::SetBounds(Exceeded { construct: Construct::SetTokens, .. })), "{e:?}");
    });
    let pad = MAX_POLICY_BYTES - policy("\"\" == \"\"").len();
    let long = policy(&format!("\"{}\" != \"\"", "x".repeat(pad)));
    assert_eq!(long.len(), MAX_POLICY_BYTES);
    let count = MAX_SET_BYTES / MAX_POLICY_BYTES;
    engine.compile(&many(count, &long)).expect("at the set's byte bound");
    let e = engine.compile(&many(count + 1, &long)).expect_err("past it");
    assert!(matches!(e, crate::PolicyError::SetBounds(Exceeded { construct: Construct::SetBytes, .. })), "{e:?}");
}

#[test]
fn text_that_is_not_cedar_is_left_to_cedars_parser() {
    for text in [
        "",
        ")))",
        "]]]}}}",
        "\"unterminated ((((",
        "permit(principal, action, resource) when { ( };",
        "\u{e9}(\u{1F600}",
    ] {
        let _ = measure(text);
        let _ = Engine::shared().check_policy(text);
    }
}

#[test]
fn random_token_soup_never_panics_and_what_passes_is_safe_for_cedar() {
    const PIECES: &[&str] = &[
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "{a: ",
        ",",
        ";",
        ".",
        ".a",
        ".contains(",
        "!",
        "-",
        "&&",
        "||",
        "==",
        "<=",
        "+",
        " has ",
        " in ",
        " like ",
        " is ",
        "if ",
        " then ",
        " else ",
        "true",
        "1",
        "\"s\"",
        "\"\\\"(\"",
        "// ((\n",
        "when {",
        "unless {",
        "@id(\"x\")",
        "permit(principal, action, resource)",
        "?principal",
        "é",
        "\\",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut passed = Vec::new();
    for _ in 0..2000 {
        let len = (next() % 400) as usize;
        let text: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
        if measure(&text).is_ok() {
            passed.push(text);
        }
    }
    assert!(!passed.is_empty());
    on_server_stack(move || {
        for text in passed {
            let _ = Engine::shared().check_policy(&text);
        }
    });
}

/// A random boolean expression whose deepest path is about `budget` constructs long.
fn random_expr(budget: usize, next: &mut impl FnMut() -> u64) -> String {
    if budget == 0 {
        return "true".to_owned();
    }
    let mut deep = || random_expr(budget - 1, &mut *next);
    let deep_first = deep();
    let small = random_expr(((next() % 3) as usize).min(budget - 1), next);
    match next() % 9 {
        0 => format!("({deep_first})"),
        1 => format!("{deep_first} && {small}"),
        2 => format!("{small} || ({deep_first})"),
        3 => format!("!({deep_first})"),
        4 => format!("if {small} then {deep_first} else false"),
        5 => format!("{{a: {deep_first}}}.a"),
        6 => format!("[{deep_first}].contains({small})"),
        7 => format!("({deep_first}) == ({small})"),
        _ => format!("{{a: {deep_first}, b: 1 + 2 * 3}}[\"a\"]"),
    }
}

#[test]
fn random_nestings_that_pass_the_bounds_are_decided_on_the_server_stack() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut passed, mut refused) = (Vec::new(), 0);
    for _ in 0..300 {
        let budget = 10 + (next() % 70) as usize;
        let text = policy(&random_expr(budget, &mut next));
        match measure(&text) {
            Ok(_) => passed.push(text),
            Err(_) => refused += 1,
        }
    }
    assert!(passed.len() > 50 && refused > 50, "{} passed, {refused} refused", passed.len());
    on_server_stack(move || {
        let engine = Engine::shared();
        let principal = PrincipalRef::Key { id: "key_x".to_owned(), role: Role::Viewer };
        let resource = ResourceRef::Sandbox { id: "sbx_x".to_owned(), project: None };
        let mut decided = 0;
        for text in passed {
            // Valid or not (the random operands need not type-check), Cedar must finish.
            if engine.check_policy(&text).is_ok() {
                decided += 1;
                let set = engine.compile(&[("pol_x".to_owned(), text)]).expect("compiles");
                let d = set.decide(&Request {
                    principal: &principal,
                    namespace: "acme",
                    action: "sandbox.exec",
                    resource: &resource,
                    target_role: None,
                });
                assert!(d.errors.iter().all(|e| !e.contains("recursion")), "{d:?}");
            }
        }
        assert!(decided > 20, "only {decided} were valid");
    });
}

#[test]
fn has_like_is_and_in_count_in_operator_chains() {
    let terms = [
        "principal is Bulkhead::Key",
        "principal in Bulkhead::Role::\"viewer\"",
        "\"abc\" like \"a*\"",
        "{a: 1} has a",
    ];
    // 32 terms of one operator each, joined by 31 `&&`s, then `&& true`s up to `ops` operators.
    let chain = |ops: usize| {
        let mut cond: Vec<&str> = (0..32).map(|i| terms[i % terms.len()]).collect();
        cond.extend(std::iter::repeat_n("true", ops - 63));
        policy(&cond.join(" && "))
    };
    accepted_and_decided(chain(MAX_OPERATOR_CHAIN));
    refused_naming(&chain(MAX_OPERATOR_CHAIN + 1), Construct::OperatorChain);
}

#[test]
fn like_patterns_are_bounded_by_the_work_they_cost() {
    // Cedar matches `"a"×n like "*" "a"×m "b"` in about (n − m) × m steps: 27 million here,
    // a quarter of a second for every request of the namespace, per such policy.
    let attack = policy(&format!("\"{}\" like \"*{}b\"", "a".repeat(10_500), "a".repeat(5_200)));
    assert!(attack.len() <= MAX_POLICY_BYTES);
    refused_naming(&attack, Construct::LikeCost);
    // Ordinary patterns are far below the bound, and the bound holds for the set together.
    let ordinary = policy("principal has email && principal.email like \"*@example.com\"");
    let m = measure(&ordinary).expect("an ordinary pattern");
    assert_eq!(m.like_cost, "\"*@example.com\"".len() * MAX_ATTRIBUTE_BYTES);
    accepted_or_denied(ordinary);
    let fits = MAX_LIKE_COST / m.like_cost;
    assert!(fits > 100, "{fits}");
    assert!(check_set(vec![m; fits]).is_ok());
    let e = check_set(vec![m; fits + 1]).expect_err("past the set's bound");
    assert_eq!(e.construct, Construct::SetLikeCost);
    // A literal matched against a pattern counts with its own length.
    let text = policy(&format!("\"{}\" like \"*a\"", "a".repeat(4096)));
    assert_eq!(measure(&text).expect("small").like_cost, 4 * 4098);
}

/// Checks and compiles `text` on the server's stack.
fn accepted_or_denied(text: String) {
    on_server_stack(move || {
        let engine = Engine::new();
        engine.check_policy(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        engine.compile(&[("pol_x".to_owned(), text.clone())]).expect("compiles");
    })
}
