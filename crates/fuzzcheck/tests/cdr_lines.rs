//! A rejected or read CDR row is reported on the line its text starts on, whatever the
//! line ends and blank lines before it.

use commcredits_engine::cdr::parse_cdrs;

const HEADER: &str = "call_id,type,user,from,to,start_time,duration_seconds";
const GOOD: &str = "c1,outbound,u,+442079460000,+14155550100,2026-11-01T10:00:00Z,60";

fn lines(file: &str) -> (Vec<u64>, Vec<u64>) {
    let p = parse_cdrs("org", file.as_bytes()).expect("a readable file");
    (p.records.iter().map(|r| r.line).collect(), p.rejected.iter().map(|r| r.line).collect())
}

#[test]
fn lf_and_crlf_files_report_the_same_lines() {
    let lf = format!("{HEADER}\n{GOOD}\nbad\n{GOOD}\n");
    assert_eq!(lines(&lf), (vec![2, 4], vec![3]));
    assert_eq!(lines(&lf.replace('\n', "\r\n")), (vec![2, 4], vec![3]));
}

#[test]
fn a_lone_carriage_return_ends_a_line_as_the_csv_reader_takes_it() {
    let lf = format!("{HEADER}\n{GOOD}\nbad\n{GOOD}\n");
    assert_eq!(lines(&lf.replace('\n', "\r")), (vec![2, 4], vec![3]));
    let mixed = format!("{HEADER}\r{GOOD}\r\n\rbad\n{GOOD}");
    assert_eq!(lines(&mixed), (vec![2, 5], vec![4]));
}

#[test]
fn blank_lines_and_quoted_line_breaks_are_counted() {
    let file = format!("{HEADER}\n\n{GOOD}\n\n\nbad\n\"q\nq\",x\n{GOOD}");
    assert_eq!(lines(&file), (vec![3, 9], vec![6, 7]));
    let crlf = format!("\u{feff}{HEADER}\r\n\r\n{GOOD}\r\nbad\r\n{GOOD}\r\n");
    assert_eq!(lines(&crlf), (vec![3, 5], vec![4]));
}
