//! Rasterises printable ASCII of a TrueType font into the 1-bit table of
//! `src/sim/font.rs` (moe-offload's PNG plot labels). Usage: fontgen FONT.ttf PX > font_data.rs
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("font file");
    let px: f32 = args[2].parse().expect("pixel size");
    let font = FontRef::try_from_slice(&bytes).expect("valid font");
    let scaled = font.as_scaled(PxScale::from(px));
    let ascent = scaled.ascent().ceil() as i32;
    let height = (scaled.ascent() - scaled.descent()).ceil() as i32;
    println!("/// Glyph cell height in pixels.");
    println!("pub(super) const HEIGHT: usize = {height};");
    println!("/// Printable ASCII (32..=126): advance width and one row bitmask per pixel row (bit x = column x).");
    println!("pub(super) const GLYPHS: [(u8, [u32; {height}]); 95] = [");
    for c in 32u8..=126 {
        let ch = c as char;
        let id = font.glyph_id(ch);
        let adv = scaled.h_advance(id).round() as i32;
        let mut rows = vec![0u32; height as usize];
        let g = id.with_scale_and_position(PxScale::from(px), ab_glyph::point(0.0, ascent as f32));
        if let Some(o) = font.outline_glyph(g) {
            let b = o.px_bounds();
            o.draw(|x, y, cov| {
                let xx = b.min.x as i32 + x as i32;
                let yy = b.min.y as i32 + y as i32;
                if cov > 0.45 && (0..height).contains(&yy) && (0..32).contains(&xx) {
                    rows[yy as usize] |= 1 << xx;
                }
            });
        }
        let r: Vec<String> = rows.iter().map(|v| format!("{v:#x}")).collect();
        println!("    ({adv}, [{}]), // {:?}", r.join(", "), ch);
    }
    println!("];");
}
