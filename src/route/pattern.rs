//! The route table's patterns and key templates as text rules, with no runtime part: a host
//! pattern (`ws-{id}--{port}.{base_domain}`), a path prefix (`/__ide/{id}/`) and a key
//! template (`workspace:{id}`). `config::validate` checks them with these functions (errors
//! are messages; the caller names the field) and `RouteTable::new` compiles them with the same.

/// One piece of a host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Lit(String),
    Id,
    Port,
}

/// A host pattern: `{id}` once, `{port}` at most once, literal text between placeholders and
/// after `{id}` a `.` or `-` (so `{id}` ends where the literal begins).
pub fn host(pattern: &str) -> Result<Vec<Token>, String> {
    let tokens = tokenize(pattern)?;
    let count = |t: &Token| tokens.iter().filter(|p| *p == t).count();
    if count(&Token::Id) != 1 {
        return Err("\"{id}\" must appear exactly once".into());
    }
    if count(&Token::Port) > 1 {
        return Err("\"{port}\" may appear at most once".into());
    }
    for pair in tokens.windows(2) {
        match pair {
            [Token::Id, Token::Lit(l)] if !l.starts_with(['.', '-']) => {
                return Err("\"{id}\" must be followed by '.' or '-'".into())
            }
            [Token::Id | Token::Port, Token::Id | Token::Port] => {
                return Err("placeholders need text between them".into())
            }
            _ => {}
        }
    }
    Ok(tokens)
}

/// A path pattern `/prefix/{id}/`: the prefix before `{id}`.
pub fn path_prefix(pattern: &str) -> Result<&str, String> {
    let Some(prefix) = pattern.strip_suffix("{id}/") else {
        return Err("must end with \"{id}/\" (e.g. \"/__ide/{id}/\")".into());
    };
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.contains('{') {
        return Err("must look like \"/prefix/{id}/\" with no other placeholder".into());
    }
    Ok(prefix)
}

/// A key template `head{x}tail` with exactly one placeholder: `(head, tail)`.
pub fn key<'t>(template: &'t str, placeholder: &str) -> Result<(&'t str, &'t str), String> {
    let (head, tail) = template
        .split_once(placeholder)
        .ok_or_else(|| format!("{placeholder:?} is missing"))?;
    if tail.contains(placeholder) {
        return Err(format!("{placeholder:?} may appear only once"));
    }
    Ok((head, tail))
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' in {pattern:?}"))?;
                tokens.push(match &rest[1..end] {
                    "id" => Token::Id,
                    "port" => Token::Port,
                    other => return Err(format!("unknown placeholder {{{other}}} in {pattern:?}")),
                });
                rest = &rest[end + 1..];
            }
            Some(n) => {
                tokens.push(Token::Lit(rest[..n].to_string()));
                rest = &rest[n..];
            }
            None => {
                tokens.push(Token::Lit(rest.to_string()));
                rest = "";
            }
        }
    }
    Ok(tokens)
}

/// A template `head{x}tail` with the key prefix applied.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    head: String,
    tail: String,
}

impl KeyTemplate {
    /// `template` checked by `key`, with `prefix` before it.
    pub fn new(prefix: &str, template: &str, placeholder: &str) -> Result<Self, String> {
        let (head, tail) = key(template, placeholder)?;
        Ok(Self {
            head: format!("{prefix}{head}"),
            tail: tail.to_string(),
        })
    }

    pub fn key(&self, value: &str) -> String {
        let mut k = String::with_capacity(self.head.len() + value.len() + self.tail.len());
        k.push_str(&self.head);
        k.push_str(value);
        k.push_str(&self.tail);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_templates_table() {
        assert_eq!(
            host("ws-{id}--{port}.x"),
            Ok(vec![
                Token::Lit("ws-".into()),
                Token::Id,
                Token::Lit("--".into()),
                Token::Port,
                Token::Lit(".x".into())
            ])
        );
        for (bad, why) in [
            ("ws-x.d", "exactly once"),
            ("{id}{port}.d", "text between"),
            ("a{port}{id}.d", "text between"),
            ("ws-{id}.{port}.{port}", "at most once"),
            ("ws-{id}.{nope}", "unknown placeholder"),
            ("ws-{id.d", "unclosed"),
            ("ws-{id}x.d", "must be followed"),
        ] {
            let e = host(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(path_prefix("/__ide/{id}/"), Ok("/__ide/"));
        assert!(path_prefix("/__ide/{id}").is_err());
        assert!(path_prefix("/a{x}/{id}/").is_err());
        assert_eq!(key("workspace:{id}", "{id}"), Ok(("workspace:", "")));
        assert!(key("w:{id}{id}", "{id}").is_err());
        assert!(key("w", "{id}").is_err());
        let t = KeyTemplate::new("eg:", "s:{sid}:x", "{sid}").expect("template");
        assert_eq!(t.key("abc"), "eg:s:abc:x");
    }
}
