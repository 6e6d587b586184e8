//! Server-rendered HTML: escaping, the page frame, small builders.
//! Every value that reaches a page goes through [`esc`].

use axum::response::Html;
use gatehouse_model::ConsolePermission as P;

use crate::Viewer;

/// `text` safe inside HTML text and double-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL query value.
pub fn url(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An RFC 3339 time, shown in the browser's zone by console.js.
pub fn time(t: &str) -> String {
    format!("<time datetime=\"{0}\">{0}</time>", esc(t))
}

/// The hidden anti-CSRF field every state-changing form carries.
pub fn csrf(viewer: &Viewer) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&viewer.csrf)
    )
}

/// A complete page: the top bar (the pages `viewer` may use, who is
/// signed in, sign-out) and `body`.
pub fn layout(title: &str, viewer: Option<&Viewer>, body: &str) -> Html<String> {
    layout_with_head(title, viewer, "", body)
}

/// [`layout`] with more elements in `<head>` (already escaped), before
/// the stylesheets and scripts so that a preload starts first.
pub fn layout_with_head(
    title: &str,
    viewer: Option<&Viewer>,
    head: &str,
    body: &str,
) -> Html<String> {
    let nav = match viewer {
        None => String::new(),
        Some(v) => {
            let mut links = vec![("/sessions", "Sessions")];
            let a = &v.access;
            if a.can(P::Watch) {
                links.push(("/live", "Live"));
            }
            if a.can(P::Audit) {
                links.push(("/audit", "Audit log"));
                links.push(("/sql", "SQL"));
            }
            if a.can(P::Runbooks) {
                links.push(("/runbooks", "Runbooks"));
            }
            if a.can(P::Approvals) {
                links.push(("/approvals", "Approvals"));
            }
            if a.can(P::Users) {
                links.push(("/users", "Users"));
            }
            let links: String = links
                .iter()
                .map(|(href, label)| format!("<a href=\"{href}\">{label}</a>"))
                .collect();
            format!(
                "<nav class=\"top\"><span class=\"brand\">Gatehouse</span>{links}<span class=\"who\">{}</span><form method=\"post\" action=\"/signout\" class=\"inline\">{}<button type=\"submit\" id=\"signout\">Sign out</button></form></nav>",
                esc(&v.user),
                csrf(v)
            )
        }
    };
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Gatehouse</title>{head}<link rel=\"stylesheet\" href=\"/assets/console.css\"><link rel=\"stylesheet\" href=\"/assets/asciinema-player.css\"><script src=\"/assets/asciinema-player.min.js\" defer></script><script src=\"/assets/console.js\" defer></script></head><body>{nav}<main>{body}</main></body></html>",
        esc(title)
    ))
}

/// A table from a header and rows of already-escaped cells.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{id}\"><thead><tr>");
    for h in head {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            out.push_str(&format!("<td>{c}</td>"));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if rows.is_empty() {
        out.push_str("<p class=\"empty\">Nothing matches.</p>");
    }
    out
}

/// A text input of a filter form, keeping its current value.
pub fn input(name: &str, label: &str, value: Option<&str>) -> String {
    format!(
        "<label>{} <input name=\"{name}\" value=\"{}\"></label>",
        esc(label),
        esc(value.unwrap_or(""))
    )
}

/// A badge: `ok`, `bad` or `warn`.
pub fn badge(kind: &str, text: &str) -> String {
    format!("<span class=\"badge {kind}\">{}</span>", esc(text))
}

/// One line saying what just happened (after a POST/redirect).
pub fn notice(text: Option<&str>) -> String {
    text.map(|t| format!("<p class=\"notice\" id=\"notice\">{}</p>", esc(t)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>\u{1b}[31m"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;\\u{1b}[31m"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
