use std::time::Instant;

use crate::config::{FirstGrants, Group, Mode};
use crate::model::dn::Dn;
use crate::model::fixtures::{BASE, delegating};
use crate::model::names::HostName;
use crate::model::{Index, Observed};

#[test]
#[ignore]
fn timing_probe() {
    for n in [2000usize, 10000] {
        let names: Vec<String> = (0..n).map(|i| format!("HV{i:05}")).collect();
        let mut computers = Vec::new();
        let mut groups = Vec::new();
        for (gi, chunk) in names.chunks(16).enumerate() {
            for h in chunk {
                let peers: Vec<&str> = chunk.iter().filter(|p| *p != h).map(String::as_str).collect();
                computers.push(delegating(h, 0x1001000, &peers));
            }
            groups.push(Group {
                name: format!("g{gi}"),
                mode: Mode::Enforce,
                hosts: chunk
                    .iter()
                    .map(|h| HostName::parse(&format!("{}.lab.test", h.to_lowercase())).unwrap())
                    .collect(),
                ad_group: None,
                file_servers: vec![],
                first_grants: FirstGrants::Auto,
            });
        }
        let observed = Observed {
            computers,
            ..Default::default()
        };
        let sfx = vec!["lab.test".to_owned()];
        let scope = vec![Dn::parse(BASE).unwrap()];
        let t = Instant::now();
        let c = observed.clone();
        eprintln!("n={n} clone {:?}", t.elapsed());
        drop(c);
        let t = Instant::now();
        for c in &observed.computers {
            for _ in 0..8 {
                std::hint::black_box(crate::model::dn_key(&c.dn));
            }
        }
        eprintln!("n={n} 8x dn_key {:?}", t.elapsed());
        let t = Instant::now();
        for c in &observed.computers {
            for s in &c.allowed_to_delegate_to {
                std::hint::black_box(crate::model::spn_key(s));
            }
        }
        eprintln!("n={n} spn_key of all entries {:?}", t.elapsed());
        let t = Instant::now();
        let _ = crate::model::identity::verify(&observed, &sfx);
        eprintln!("n={n} identity::verify {:?}", t.elapsed());
        let t = Instant::now();
        let index = Index::new(&observed, &sfx);
        eprintln!("n={n} index {:?}", t.elapsed());
        let t = Instant::now();
        for g in &groups {
            let _ = g.resolve(&observed, &index);
        }
        eprintln!("n={n} resolve all {:?}", t.elapsed());
        let t = Instant::now();
        let p = super::plan(&groups, &scope, &sfx, &observed);
        eprintln!("n={n} plan {:?} changes {}", t.elapsed(), p.changes.len());
    }
}
