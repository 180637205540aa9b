//! A small hand-written SVG chart: panels of lines or grouped bars over labelled categories.

use std::fmt::Write as _;

/// How a panel draws its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Points joined by lines (a trend over the categories).
    Lines,
    /// Side-by-side bars per category.
    Bars,
}

/// One named set of values, one per category (`None`: not measured).
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Values, in category order.
    pub values: Vec<Option<f64>>,
}

/// One plot.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title above the plot.
    pub title: String,
    /// Category labels along the x axis.
    pub categories: Vec<String>,
    /// Label of the y axis.
    pub y_label: String,
    /// How to draw.
    pub kind: Kind,
    /// What to draw.
    pub series: Vec<Series>,
}

const COLORS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 40.0;
const PLOT_W: f64 = 330.0;
const PLOT_H: f64 = 200.0;

/// A round top for the y axis (1, 2 or 5 times a power of ten) at or above `max`.
pub fn nice_top(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&t| t >= max)
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The panels side by side, as an SVG document.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" font-family="sans-serif" font-size="11">"#,
        h = PANEL_H + 20.0
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="16" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, r#"<g transform="translate({},20)">"#, i as f64 * PANEL_W);
        panel(&mut s, p);
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel) {
    let max = p
        .series
        .iter()
        .flat_map(|x| x.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = nice_top(max);
    let y = |v: f64| TOP + PLOT_H - v / top * PLOT_H;
    let n = p.categories.len().max(1) as f64;
    let slot = PLOT_W / n;
    let x = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"#,
        LEFT + PLOT_W / 2.0,
        TOP - 18.0,
        escape(&p.title)
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
            LEFT + PLOT_W,
            LEFT - 4.0,
            y(v) + 4.0,
            y = y(v),
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(&p.y_label)
    );
    for (i, c) in p.categories.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            TOP + PLOT_H + 14.0,
            escape(c)
        );
    }
    let bars = p.series.len().max(1) as f64;
    let bar_w = slot * 0.8 / bars;
    for (j, series) in p.series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        match p.kind {
            Kind::Lines => {
                let points: Vec<String> = series
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                for pt in &points {
                    let (cx, cy) = pt.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"/>"#);
                }
            }
            Kind::Bars => {
                for (i, v) in series.values.iter().enumerate() {
                    if let Some(v) = v {
                        let bx = x(i) - slot * 0.4 + j as f64 * bar_w;
                        let _ = writeln!(
                            s,
                            r#"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{:.1}" fill="{color}"/>"#,
                            y(*v),
                            TOP + PLOT_H - y(*v)
                        );
                    }
                }
            }
        }
        let ly = TOP + PLOT_H + 30.0 + 14.0 * j as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 9.0,
            LEFT + 14.0,
            escape(&series.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(kind: Kind) -> Panel {
        Panel {
            title: "cost <per packet>".into(),
            categories: vec!["1".into(), "16".into(), "256".into()],
            y_label: "ns".into(),
            kind,
            series: vec![
                Series {
                    name: "lnat".into(),
                    values: vec![Some(100.0), Some(120.0), None],
                },
                Series {
                    name: "empty".into(),
                    values: vec![Some(20.0), Some(20.0), Some(21.0)],
                },
            ],
        }
    }

    #[test]
    fn tops_are_round() {
        assert_eq!(nice_top(0.0), 1.0);
        assert_eq!(nice_top(120.0), 200.0);
        assert_eq!(nice_top(450.0), 500.0);
        assert_eq!(nice_top(1000.0), 1000.0);
        assert_eq!(nice_top(0.07), 0.1);
    }

    #[test]
    fn lines_skip_missing_points_and_text_is_escaped() {
        let s = svg("t", &[panel(Kind::Lines)]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        // Two points for lnat (one missing), three for the empty program.
        assert_eq!(s.matches("<circle").count(), 5);
        assert!(s.contains("cost &lt;per packet&gt;"));
        // 120 on a 0..200 axis, 200 px tall from y=40: y = 40 + 200 - 120.
        assert!(s.contains(",120.0"), "{s}");
    }

    #[test]
    fn bars_are_proportional() {
        let s = svg("t", &[panel(Kind::Bars), panel(Kind::Lines)]);
        assert!(s.contains(r##"height="100.0" fill="#d62728""##), "{s}");
        assert!(s.contains(r#"width="840""#));
    }
}
