package keyless;

import java.util.Map;
import java.util.stream.Collectors;

/** One flat JSON object on stdout, for the test to read (values: strings, numbers, booleans). */
final class Json {
    private Json() {}

    static void print(Map<String, Object> fields) {
        String body = fields.entrySet().stream()
            .map(e -> quote(e.getKey()) + ":" + value(e.getValue()))
            .collect(Collectors.joining(","));
        System.out.println("{" + body + "}");
    }

    private static String value(Object v) {
        return v instanceof Number || v instanceof Boolean ? v.toString() : quote(String.valueOf(v));
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
