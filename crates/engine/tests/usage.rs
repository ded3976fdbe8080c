//! The PSTN usage report is exact: on thousands of generated calls the `Charge` column
//! of the CSV and of the Excel workbook (read back with calamine) adds up, to the cent,
//! to the credits the ledger charged; filters and JSON pages cover every call once.

mod common;
use calamine::{open_workbook, Data, Reader, Xlsx};
use commcredits_core::money::Currency;
use commcredits_engine::usage::{UsageFilter, USAGE_HEADER};
use commcredits_engine::Command;
use common::*;
use std::collections::BTreeSet;

const CALLS: usize = 3_000;

#[test]
fn the_report_adds_up_to_the_ledger_to_the_cent() {
    let e = engine();
    let now = t("2026-12-01T00:00:00Z");
    let o = setup(&e, t("2026-11-01T00:00:00Z"));
    // Enough money for every call: an EA and several purchases.
    let ea = created(
        e.apply_one(now, Command::AddAgreement { org: o.id.clone(), agreement_number: "EA-9".into() }).unwrap(),
    );
    e.purchase(&o.id, "5000", &ea, None, Some(t("2026-11-01T00:00:00Z")), now).unwrap();
    e.apply_one(
        now,
        Command::AssignLicense { org: o.id.clone(), sku: "audio_conferencing".into(), users: vec![o.ada.clone()] },
    )
    .unwrap();
    e.apply_one(
        now,
        Command::AddNumber { org: o.id.clone(), number: "+18002660100".into(), kind: "toll_free".into(), user: None },
    )
    .unwrap();
    // A month of calls of every kind, imported as a CDR file.
    let users =
        [("ada@contoso.com", "+14155550101"), ("bob@contoso.com", "+442079460001"), ("cy@contoso.com", "+14155550102")];
    let dests = ["+14155550100", "+442079460000", "+447400123456", "+4930123456", "+33612345678", "+2348031234567"];
    let mut csv = String::from("call_id,type,user,from,to,start_time,duration_seconds\n");
    let mut seed = 7u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..CALLS {
        let r = next();
        let start = t("2026-11-01T00:00:00Z") + jiff::SignedDuration::from_secs((r % (29 * 86_400)) as i64);
        let duration = 1 + (next() % 1_800);
        let (kind, user, from) = match r % 10 {
            0..=5 => ("outbound", users[(r / 10 % 3) as usize].0, users[(r / 10 % 3) as usize].1),
            6 | 7 => ("toll_free_inbound", "", dests[(r / 10 % 6) as usize]),
            _ => ("conference_dial_out", "ada@contoso.com", "+14155550101"),
        };
        let to = if kind == "toll_free_inbound" { "+18002660100" } else { dests[(r / 100 % 6) as usize] };
        csv.push_str(&format!("cdr-{i},{kind},{user},{from},{to},{start},{duration}\n"));
    }
    let report = e.import_cdrs(&o.id, csv.as_bytes(), now, &mut |_| {}).unwrap();
    // Cy has no credits license: his calls beyond the plan are refused, nothing else.
    assert!(report.charged > CALLS / 2, "{} charged", report.charged);
    assert!(
        report.rejected.iter().all(|r| r.code == "call_denied"),
        "{:?}",
        &report.rejected[..report.rejected.len().min(3)]
    );
    let books = e.check_books(&o.id).unwrap();
    let stored = e.cdrs(&o.id, t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).unwrap();
    assert_eq!(stored.len(), report.charged);
    let month = UsageFilter {
        from: Some(t("2026-11-01T00:00:00Z")),
        to: Some(t("2026-12-01T00:00:00Z")),
        ..Default::default()
    };
    let usd = Currency::parse("USD").unwrap();

    // CSV: the header of the original product, then ours; Charge in major units, exact.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("usage.csv");
    let mut file = std::fs::File::create(&csv_path).unwrap();
    assert_eq!(e.write_usage_csv(&o.id, &month, &mut file).unwrap(), stored.len());
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    assert_eq!(rdr.headers().unwrap().iter().collect::<Vec<_>>(), USAGE_HEADER.to_vec());
    let mut charged = 0i64;
    let mut rows = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        charged += usd.parse_major(&rec[17]).unwrap();
        assert!(usd.parse_major(&rec[16]).unwrap() <= usd.parse_major(&rec[17]).unwrap());
        rows += 1;
    }
    assert_eq!(rows, stored.len());
    assert_eq!(charged, books.charges, "CSV Charge column vs ledger charges");

    // The original product's bundle: the same CSV and the parameters, in a zip.
    let mut bundle = Vec::new();
    assert_eq!(e.write_usage_zip(&o.id, &month, "exp-1", now, &mut bundle).unwrap(), stored.len());
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bundle)).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().to_string()).collect();
    assert_eq!(names, ["Calls.Export.exp-1.csv", "parameters.json"]);
    let mut inner = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("Calls.Export.exp-1.csv").unwrap(), &mut inner).unwrap();
    assert_eq!(inner, std::fs::read_to_string(&csv_path).unwrap(), "the bundle holds the CSV export");
    let parameters: serde_json::Value = serde_json::from_reader(zip.by_name("parameters.json").unwrap()).unwrap();
    assert_eq!(parameters["rows"], stored.len());
    assert_eq!(parameters["from"], "2026-11-01T00:00:00Z");
    assert_eq!(parameters["columns"][1], "Call ID");

    // Excel: typed cells; the Charge column read back sums to the same cents.
    let xlsx_path = dir.path().join("usage.xlsx");
    assert_eq!(e.write_usage_xlsx(&o.id, &month, &xlsx_path).unwrap(), stored.len());
    let mut wb: Xlsx<_> = open_workbook(&xlsx_path).unwrap();
    let range = wb.worksheet_range("PSTN usage").unwrap();
    let mut it = range.rows();
    let header: Vec<String> = it.next().unwrap().iter().map(|c| c.to_string()).collect();
    assert_eq!(header, USAGE_HEADER.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    let mut cents = 0i64;
    let mut n = 0;
    for row in it {
        assert!(matches!(row[13], Data::DateTime(_)), "Start Time is a date: {:?}", row[13]);
        assert!(matches!(row[15], Data::Float(_) | Data::Int(_)), "Duration is a number");
        match row[17] {
            Data::Float(v) => cents += (v * 100.0).round() as i64,
            Data::Int(v) => cents += v * 100,
            ref other => panic!("Charge is not a number: {other:?}"),
        }
        n += 1;
    }
    assert_eq!(n, stored.len());
    assert_eq!(cents, books.charges, "Excel Charge column vs ledger charges");

    // Filters partition the calls.
    let count = |f: UsageFilter| e.for_each_usage(&o.id, &f, &mut |_| Ok(())).unwrap();
    let by_type: usize = ["user_out", "conf_out", "ucap_in"]
        .iter()
        .map(|k| count(UsageFilter { call_type: Some(k.to_string()), ..month.clone() }))
        .sum();
    assert_eq!(by_type, stored.len());
    let by_cap: usize = ["MCOPSTN1", "MCOPSTN2", "MCOMEETADD", "MCOPSTNPP", "MCOEV"]
        .iter()
        .map(|k| count(UsageFilter { capability: Some(k.to_string()), ..month.clone() }))
        .sum();
    assert_eq!(by_cap, stored.len());
    let bob = count(UsageFilter { user: Some("bob@contoso.com".into()), ..month.clone() });
    assert_eq!(bob, stored.iter().filter(|c| c.user_id.as_deref() == Some(o.bob.as_str())).count());
    let de = count(UsageFilter { country: Some("de".into()), ..month.clone() });
    assert_eq!(de, stored.iter().filter(|c| c.dest_country.as_deref() == Some("DE")).count());
    assert!(count(UsageFilter { funding: Some("credits".into()), ..month.clone() }) > 0);

    // JSON pages: every call once.
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let page = e.usage_page(&o.id, &month, cursor.as_deref(), 500).unwrap();
        for r in &page.items {
            assert!(seen.insert(r.usage_id.clone()));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), stored.len());
    assert!(e.usage_page(&o.id, &month, Some("nope"), 10).is_err());

    // Rows come in the stored order (the report reads on one thread and writes on
    // another), and a writer that fails stops the report with its own error, however
    // far the reading thread got.
    let mut order = Vec::new();
    e.for_each_usage(&o.id, &month, &mut |r| {
        order.push(r.usage_id.clone());
        Ok(())
    })
    .unwrap();
    let mut expected: Vec<_> = stored.iter().map(|c| (c.start_at, c.call_id.clone(), c.usage_id.clone())).collect();
    expected.sort();
    assert_eq!(order, expected.into_iter().map(|(_, _, u)| u).collect::<Vec<_>>());
    for stop_at in [1, 700, stored.len()] {
        let mut handed = 0;
        let r = e.for_each_usage(&o.id, &month, &mut |_| {
            handed += 1;
            if handed == stop_at {
                return Err(commcredits_core::Error::new(
                    commcredits_core::ErrorCode::NotFound,
                    "the client went away",
                ));
            }
            Ok(())
        });
        let err = r.unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str(), handed),
            (commcredits_core::ErrorCode::NotFound, "the client went away", stop_at)
        );
    }
    assert!(e
        .for_each_usage(&o.id, &UsageFilter { user: Some("nobody@x.example".into()), ..month.clone() }, &mut |_| Ok(()))
        .is_err());
}
