//! Text tables as kubectl and cilium print them: left-aligned columns three spaces apart, a
//! header row, and cells of several lines (Cilium's one label per line) that continue the
//! row below with the other columns blank.

/// Space between columns.
const GAP: &str = "   ";

/// A table with `headers`; each cell of `rows` may hold several lines (`\n`).
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<Vec<&str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| cell.lines().collect()).collect())
        .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|column| {
            cells
                .iter()
                .flat_map(|row| row.get(column).into_iter().flatten())
                .map(|line| line.chars().count())
                .chain([headers[column].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |parts: &[&str]| {
        let mut text = String::new();
        for (column, part) in parts.iter().enumerate() {
            // Padded by hand: `{:w$}` panics for widths above 65 535 (a huge label).
            text.push_str(part);
            let pad = widths[column].saturating_sub(part.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
            text.push_str(GAP);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers);
    for row in &cells {
        let height = row.iter().map(Vec::len).max().unwrap_or(0).max(1);
        for index in 0..height {
            let parts: Vec<&str> = (0..headers.len())
                .map(|column| {
                    row.get(column)
                        .and_then(|lines| lines.get(index))
                        .copied()
                        .unwrap_or("")
                })
                .collect();
            line(&parts);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_multi_line_cells_continue_the_row() {
        let text = render(
            &["ID", "LABELS"],
            &[
                vec!["1".into(), "reserved:host".into()],
                vec![
                    "256".into(),
                    "k8s:app=web\nk8s:io.kubernetes.pod.namespace=shop".into(),
                ],
            ],
        );
        assert_eq!(
            text,
            "ID    LABELS\n\
             1     reserved:host\n\
             256   k8s:app=web\n\
             \x20     k8s:io.kubernetes.pod.namespace=shop\n"
        );
    }
}
