//! Themes: colours named by role, loaded from `themes/*.toml`.
//!
//! Panes ask for roles (`title`, `muted`, `error`…), never raw colours. A theme file may set only
//! some roles; the others come from the dark theme, so a partial user theme still works.

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

pub const BUILTIN: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];
pub const BUILTIN_NAMES: [&str; 3] = ["dark", "light", "high-contrast"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    fg: Option<String>,
    bg: Option<String>,
    #[serde(default)]
    bold: bool,
    #[serde(default)]
    italic: bool,
    #[serde(default)]
    underline: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: Option<String>,
    syntect_theme: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, RoleSpec>,
}

/// Resolved styles for every role.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub syntect_theme: String,
    pub text: Style,
    pub muted: Style,
    pub accent: Style,
    pub title: Style,
    pub border: Style,
    pub border_focused: Style,
    pub selection: Style,
    pub error: Style,
    pub warning: Style,
    pub success: Style,
    pub user: Style,
    pub assistant: Style,
    pub code_bg: Style,
    pub gauge: Style,
    pub status_bar: Style,
}

const ROLES: [&str; 15] = [
    "text",
    "muted",
    "accent",
    "title",
    "border",
    "border_focused",
    "selection",
    "error",
    "warning",
    "success",
    "user",
    "assistant",
    "code_bg",
    "gauge",
    "status_bar",
];

fn style_of(spec: &RoleSpec) -> Result<Style, String> {
    let mut s = Style::default();
    if let Some(fg) = &spec.fg {
        s = s.fg(Color::from_str(fg).map_err(|_| format!("unknown colour {fg:?}"))?);
    }
    if let Some(bg) = &spec.bg {
        s = s.bg(Color::from_str(bg).map_err(|_| format!("unknown colour {bg:?}"))?);
    }
    if spec.bold {
        s = s.add_modifier(Modifier::BOLD);
    }
    if spec.italic {
        s = s.add_modifier(Modifier::ITALIC);
    }
    if spec.underline {
        s = s.add_modifier(Modifier::UNDERLINED);
    }
    Ok(s)
}

impl Theme {
    /// A built-in theme by name, or a user theme from `<config_dir>/themes/<name>.toml`.
    pub fn load(name: &str, config_dir: &Path) -> Result<Theme, String> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => t.to_string(),
            None => {
                let path = config_dir.join("themes").join(format!("{name}.toml"));
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read theme {}: {e}", path.display()))?
            }
        };
        Theme::parse(name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Theme, String> {
        let base: ThemeFile = toml::from_str(BUILTIN[0].1).map_err(|e| e.to_string())?;
        let file: ThemeFile =
            toml::from_str(text).map_err(|e| format!("theme {name}: {}", e.message()))?;
        for role in file.roles.keys() {
            if !ROLES.contains(&role.as_str()) {
                return Err(format!(
                    "theme {name}: unknown role {role:?}; roles are {}",
                    ROLES.join(", ")
                ));
            }
        }
        let role = |r: &str| -> Result<Style, String> {
            let spec = file
                .roles
                .get(r)
                .or_else(|| base.roles.get(r))
                .cloned()
                .unwrap_or_default();
            style_of(&spec).map_err(|e| format!("theme {name}, role {r}: {e}"))
        };
        Ok(Theme {
            name: file.name.clone().unwrap_or_else(|| name.to_string()),
            syntect_theme: file
                .syntect_theme
                .or(base.syntect_theme)
                .unwrap_or_else(|| "base16-ocean.dark".into()),
            text: role("text")?,
            muted: role("muted")?,
            accent: role("accent")?,
            title: role("title")?,
            border: role("border")?,
            border_focused: role("border_focused")?,
            selection: role("selection")?,
            error: role("error")?,
            warning: role("warning")?,
            success: role("success")?,
            user: role("user")?,
            assistant: role("assistant")?,
            code_bg: role("code_bg")?,
            gauge: role("gauge")?,
            status_bar: role("status_bar")?,
        })
    }

    pub fn dark() -> Theme {
        Theme::parse("dark", BUILTIN[0].1).expect("built-in dark theme is valid")
    }
}

/// Whether `name` is a built-in theme or a readable, valid user theme.
pub fn is_known(name: &str, config_dir: &Path) -> bool {
    Theme::load(name, config_dir).is_ok()
}

/// Every theme available: built-ins, then user files, for cycling at run time.
pub fn available(config_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = BUILTIN_NAMES.iter().map(|s| s.to_string()).collect();
    if let Ok(rd) = std::fs::read_dir(config_dir.join("themes")) {
        let mut user: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml")
                    .then(|| p.file_stem()?.to_str().map(str::to_string))
                    .flatten()
            })
            .filter(|n| !names.contains(n))
            .collect();
        user.sort();
        names.extend(user);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_differ() {
        let dir = tempfile::tempdir().unwrap();
        let themes: Vec<Theme> = BUILTIN_NAMES
            .iter()
            .map(|n| Theme::load(n, dir.path()).unwrap())
            .collect();
        assert_ne!(themes[0].text, themes[1].text);
        assert_ne!(themes[0].selection, themes[2].selection);
    }

    #[test]
    fn partial_theme_falls_back_per_role() {
        let t = Theme::parse("mine", "[roles]\nerror = { fg = \"red\" }\n").unwrap();
        assert_eq!(t.error, Style::default().fg(Color::Red));
        assert_eq!(t.text, Theme::dark().text);
    }

    #[test]
    fn bad_roles_and_colours_are_errors() {
        assert!(Theme::parse("x", "[roles]\nnope = { fg = \"red\" }\n")
            .unwrap_err()
            .contains("unknown role"));
        assert!(Theme::parse("x", "[roles]\ntext = { fg = \"reddish\" }\n")
            .unwrap_err()
            .contains("unknown colour"));
    }
}
