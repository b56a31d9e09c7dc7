// Writes COUNT messages into a Pickup folder with Mono's System.Net.Mail.SmtpClient and
// SpecifiedPickupDirectory, as .NET applications do: each file is created in Pickup and written
// in place. Mono never folds header fields, so 60 recipients make one line of about 1,500 octets.
// Usage: mono MonoPickup.exe PICKUP_DIR COUNT BODY_LINES
using System;
using System.Net.Mail;
using System.Text;

class MonoPickup {
    static int Main(string[] args) {
        var client = new SmtpClient("localhost");
        client.DeliveryMethod = SmtpDeliveryMethod.SpecifiedPickupDirectory;
        client.PickupDirectoryLocation = args[0];
        int count = int.Parse(args[1]);
        int lines = int.Parse(args[2]);
        for (int i = 0; i < count; i++) {
            var message = new MailMessage("alice@example.com", "bob@example.com");
            for (int r = 0; r < 60; r++) message.To.Add("user" + r + "@example.com");
            message.Subject = "mono " + i;
            var body = new StringBuilder();
            for (int k = 0; k < lines; k++) body.Append("line " + k + " of message " + i + "\r\n");
            message.Body = body.ToString();
            client.Send(message);
        }
        return 0;
    }
}
