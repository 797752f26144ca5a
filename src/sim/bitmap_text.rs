//! A bitmap drawing backend that can write text: plotters' `BitMapBackend` with `draw_text`
//! and `estimate_text_size` answered from the embedded bitmap font of [`super::font`], so PNG
//! plots get their titles, tick labels and legends without a font-rendering dependency.

use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use super::font::{GLYPHS, HEIGHT};

/// `BitMapBackend` plus bitmap-font text.
pub(super) struct TextBitMap<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> TextBitMap<'a> {
    pub(super) fn new(inner: BitMapBackend<'a>) -> Self {
        TextBitMap { inner }
    }
}

fn glyph(c: char) -> &'static (u8, [u32; HEIGHT]) {
    let i = c as usize;
    // Characters outside printable ASCII are drawn as '?'.
    GLYPHS.get(i.wrapping_sub(32)).unwrap_or(&GLYPHS[b'?' as usize - 32])
}

fn text_size(text: &str) -> (i32, i32) {
    (text.chars().map(|c| glyph(c).0 as i32).sum(), HEIGHT as i32)
}

type Res<E> = Result<(), DrawingErrorKind<E>>;

impl<'a> DrawingBackend for TextBitMap<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Res<Self::ErrorType> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Res<Self::ErrorType> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Res<Self::ErrorType> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Res<Self::ErrorType> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Res<Self::ErrorType> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Res<Self::ErrorType> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Res<Self::ErrorType> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Res<Self::ErrorType> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Res<Self::ErrorType> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Res<Self::ErrorType> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        // Anchor and rotation as plotters' default `draw_text` applies them.
        let (width, height) = text_size(text);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        let mut x0 = 0;
        for c in text.chars() {
            let (adv, rows) = glyph(c);
            for (y, row) in rows.iter().enumerate() {
                for x in 0..32 {
                    if row >> x & 1 == 1 {
                        let (tx, ty) = trans.transform(x0 + x + dx, y as i32 + dy);
                        let (px, py) = (pos.0 + tx, pos.1 + ty);
                        if px >= 0 && py >= 0 && px < w as i32 && py < h as i32 {
                            self.inner.draw_pixel((px, py), color)?;
                        }
                    }
                }
            }
            x0 += *adv as i32;
        }
        Ok(())
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        _style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = text_size(text);
        Ok((w as u32, h as u32))
    }
}
