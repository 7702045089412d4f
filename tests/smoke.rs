use shardstone::Engine;

#[test]
fn insert_read_delete_many() {
    let engine = Engine::in_memory().unwrap();
    let n = 20_000u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        engine
            .run("load", |tx| {
                for &i in chunk {
                    let k = format!("key{:08}", (i as u64 * 7919) % n as u64);
                    tx.put(k.as_bytes(), &[i as u8; 100])?;
                }
                Ok(())
            })
            .unwrap();
    }
    let snap = engine.snapshot();
    assert_eq!(snap.range(..).count(), n as usize);
    let rev: Vec<_> = snap.range(..).rev().map(|r| r.unwrap().0).collect();
    assert_eq!(rev.len(), n as usize);
    assert!(rev.windows(2).all(|w| w[0] > w[1]));
    for i in (0..n).step_by(2) {
        let k = format!("key{:08}", i);
        assert!(engine.run("del", |tx| tx.delete(k.as_bytes())).unwrap());
    }
    assert_eq!(engine.snapshot().range(..).count(), n as usize / 2);
    assert_eq!(snap.range(..).count(), n as usize);
    drop(snap);
    for i in (1..n).step_by(2) {
        let k = format!("key{:08}", i);
        assert!(engine.run("del", |tx| tx.delete(k.as_bytes())).unwrap());
    }
    assert_eq!(engine.snapshot().range(..).count(), 0);
    engine.collect_garbage();
    let st = engine.stats();
    eprintln!("{:?}", st.store);
    eprintln!("restructures {}", st.restructures);
}
