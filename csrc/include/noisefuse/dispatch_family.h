// Turns the call's traffic-changing flags into template parameters: {pn, single buffer} x
// {no second moment, second moment, amsgrad}, the six kernel variants per dtype. Every other flag
// (heavy_ball vs ema, nesterov, decoupled, maximize, Demon) is a runtime value.
#pragma once

#include <type_traits>

#include "noisefuse/update_element.h"

namespace noisefuse {
inline namespace NF_ISA_NS {

template <typename Fn>
void dispatch_family(bool pn, bool second_moment, bool amsgrad, Fn&& fn) {
  using Pn = std::true_type;
  using Single = std::false_type;
  using None = std::integral_constant<int, kNoSecondMoment>;
  using Second = std::integral_constant<int, kSecondMoment>;
  using Ams = std::integral_constant<int, kAmsgrad>;
  if (pn) {
    if (amsgrad) fn(Pn{}, Ams{});
    else if (second_moment) fn(Pn{}, Second{});
    else fn(Pn{}, None{});
  } else {
    if (amsgrad) fn(Single{}, Ams{});
    else if (second_moment) fn(Single{}, Second{});
    else fn(Single{}, None{});
  }
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
